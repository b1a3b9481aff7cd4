"""Throughput: the service under concurrent load, async jobs per backend, and cache hits.

    .venv/bin/python bench/throughput.py [--limit 2000] [--singles 800] [--repeat 2]

Raw baselines first, in this process (SentenceTransformer on the CPU, torch's default
threads): sequential single-text encode, encode in consecutive chunks of 32, encode of the
whole list (batch_size 32). The raw model is released before the service starts.

Then Redis (embedded), the API (gunicorn, WEB_CONCURRENCY=2) and one CPU worker
(`--pool threads --concurrency 16`) on free ports, with generous rate limits, and:

  - `--clients` (16) concurrent clients, one passage per request, `--singles` (800)
    requests (Cache-Control: no-store): texts/s, p50, p95;
  - `--chunk-clients` (4) concurrent clients, 32 passages per request, over all passages;
  - all passages as ONE async job (POST /api/v1/jobs, polled every 20 ms, base64
    answer) through the torch backend and, after a worker restart, the onnx backend (the
    first onnx start exports the model into MODEL_CACHE_DIR, outside any timing), and the
    lowest cosine between each job's vectors and the raw torch vectors;
  - cache hits: one 32-text request, primed into the cache, repeated by wrk for
    `--wrk-seconds` at `--wrk-connections` (base64 answers, barred; float answers, shown);
  - the batches the worker really formed in each scenario (its Redis stats hash, reset
    before and read after every run).

Every figure runs `--repeat` times (at least 2) and shows mean [min-max], with the CPU
that processes outside the bench took meanwhile. Writes
bench/results/throughput-<timestamp>.json; exits 1 when a bar fails.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import orjson
import redis
import requests

import raw_encode
from cli.redis_server import RedisServer
from common import keys
from common.registry import BUILTIN_MODELS_FILE, ModelSpec
from local_stack import unreserved_port, wait_healthy
from machine import OthersCpu
from report import Bar, Figures, bar_lines
from workload import CHUNK, chunks, load_texts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "passages.jsonl"
RESULTS_DIR = ROOT / "bench" / "results"
MODEL = "all-MiniLM-L6-v2"
MAX_INPUTS = 2048  # the API's default MAX_INPUTS: a job of more texts is split
SERVICE_ENV = {
    "WEB_CONCURRENCY": "2",
    "RATE_LIMIT_REQUESTS_PER_MINUTE": "10000000",
    "RATE_LIMIT_BURST": "1000000",
    "MAX_CONCURRENT_REQUESTS": "200",
}
WORKER = "celery -A workers.celery_app worker -Q cpu --pool threads --concurrency 16"
WORKER_START_TIMEOUT_S = 900.0  # the first onnx start exports the model
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 300.0
JOB_TIMEOUT_S = 1800.0
POLL_S = 0.02
JSON = {"Content-Type": "application/json"}
NO_STORE = JSON | {"Cache-Control": "no-store"}

BAR_SINGLES_RATIO = 1.5
BAR_SINGLES_P95_MS = 400.0
BAR_CHUNKS_RATIO = 1.5
BAR_JOB_RATIO = 1.3
BAR_HITS_RPS = 1000.0
BAR_HITS_P50_MS = 5.0


# --- the service ------------------------------------------------------------------------


def model_entry() -> dict[str, Any]:
    """The model's table in the built-in registry (common/models.toml)."""
    return dict(tomllib.loads(BUILTIN_MODELS_FILE.read_text())["models"][MODEL])


def model_spec() -> ModelSpec:
    return ModelSpec(name=MODEL, **model_entry())


def write_models_file(path: Path, backend: str) -> Path:
    """A registry of only the model's entry, copied, with `backend` set."""
    lines = ["# written by bench/throughput.py", f'[models."{MODEL}"]']
    for name, value in (model_entry() | {"backend": backend}).items():
        if isinstance(value, bool):
            lines.append(f"{name} = {str(value).lower()}")
        elif isinstance(value, int | float):
            lines.append(f"{name} = {value}")
        else:
            lines.append(f"{name} = {json.dumps(str(value))}")
    path.write_text("\n".join(lines) + "\n")
    return path


class Stack:
    """Redis, the API and one CPU worker of a chosen backend, in a temporary directory.

    Started as bench/local_stack.py starts them (the API and the worker in sessions of
    their own, Redis with SIGINT blocked, so Ctrl-C reaches only the bench, which stops
    them in order), with SERVICE_ENV; the worker gets MODELS_FILE naming a copy of the
    model's registry entry with its backend, and can be restarted with another.
    """

    def __init__(self, label: str, backend: str = "torch") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"embeddings-{label}-")
        self.dir = Path(self._tmp.name)
        self.port = unreserved_port()
        self.redis = RedisServer(data_dir=self.dir / "redis", port=unreserved_port(), persist=False)
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.backend = backend
        self.env: dict[str, str] = {}
        self._starts = 0
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_pid(self) -> int:
        if self.api is None:
            raise RuntimeError("the service is not started")
        return self.api.pid

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis.url)
        return self._client

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.dir / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _start(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.redis.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        self.env = dict(
            os.environ,
            PORT=str(self.port),
            HOST="127.0.0.1",
            REDIS_URL=self.redis.url,
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            **SERVICE_ENV,
        )
        gunicorn = ["gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"]
        self.api = self._spawn("api", gunicorn, self.env)
        self._start_worker(self.backend)
        try:
            wait_healthy(self.url, [self.api, self.worker])  # type: ignore[list-item]
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{self.log_tails()}") from None

    def _start_worker(self, backend: str) -> float:
        """Start a worker of `backend`; seconds until its heartbeat names the model."""
        self._starts += 1
        models = write_models_file(self.dir / f"models-{backend}.toml", backend)
        node = f"bench-{backend}-{self._starts}@%h"
        args = [*WORKER.split(), "-n", node, "--loglevel", "warning"]
        started = time.monotonic()
        worker = self._spawn(
            f"worker-{backend}-{self._starts}", args, self.env | {"MODELS_FILE": str(models)}
        )
        self.worker, self.backend = worker, backend
        while time.monotonic() < started + WORKER_START_TIMEOUT_S:
            if worker.poll() is not None:
                raise RuntimeError(f"the {backend} worker exited at start\n{self.log_tails()}")
            for raw in self.client.hvals(keys.WORKERS):
                info = json.loads(raw)
                if info.get("pid") == worker.pid and MODEL in info.get("models", []):
                    return time.monotonic() - started
            time.sleep(0.25)
        raise TimeoutError(f"the {backend} worker did not load {MODEL}\n{self.log_tails()}")

    def restart_worker(self, backend: str) -> float:
        """Stop the worker, start one of `backend`; seconds until it has the model."""
        self._stop(self.worker)
        self.worker = None
        return self._start_worker(backend)

    def log_tails(self, lines: int = 20) -> str:
        out = []
        for log in sorted(self.dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    @staticmethod
    def _stop(child: subprocess.Popen[bytes] | None) -> None:
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def stop(self) -> None:
        """SIGTERM the worker and the API (kill what outlives the timeout), then Redis."""
        for child in (self.worker, self.api):
            self._stop(child)
        if self._client is not None:
            self._client.close()
        self.redis.stop()
        self._tmp.cleanup()

    def reset_batches(self) -> None:
        """Clear the worker's batch counters (workers/stats.py)."""
        self.client.delete(keys.batch_stats(MODEL))

    def read_batches(self) -> Counter[str]:
        raw = self.client.hgetall(keys.batch_stats(MODEL))
        return Counter({k.decode(): float(v) for k, v in raw.items()})


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: the service is stopped on the way."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _: sys.exit(128 + number))


# --- the worker's batches ---------------------------------------------------------------


class BatchLog:
    """The worker's batch counters per scenario, summed over its runs."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Counter[str]] = {}
        self.runs: Counter[str] = Counter()

    def run(self, stack: Stack, scenario: str, work: Callable[[], Any]) -> Any:
        """`work()` between a reset and a read of the worker's stats hash."""
        stack.reset_batches()
        result = work()
        seen = stack.read_batches()
        self.scenarios.setdefault(scenario, Counter()).update(seen)
        self.runs[scenario] += 1
        print(f"    worker: {summary_line(seen)}", flush=True)
        return result

    def lines(self) -> list[str]:
        out = []
        for scenario, seen in self.scenarios.items():
            out.append(f"{scenario} ({self.runs[scenario]} runs): {summary_line(seen)}")
            out += histogram(seen)
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            name: {"runs": self.runs[name], "counters": dict(seen), **derived(seen)}
            for name, seen in self.scenarios.items()
        }


def derived(seen: Counter[str]) -> dict[str, float | None]:
    def per(a: str, b: str) -> float | None:
        return seen[a] / seen[b] if seen[b] else None

    return {
        "texts_per_pass": per("pass_texts", "passes"),
        "requests_per_collection": per("requests", "collections"),
        "texts_per_collection": per("texts", "collections"),
        "padding_ratio": per("padded_tokens", "tokens"),
        "distinct_share": per("distinct_texts", "texts"),
    }


def summary_line(seen: Counter[str]) -> str:
    if not seen["passes"]:
        return f"no forward pass ({seen['collections']:.0f} collections)"
    d = derived(seen)
    return (
        f"{seen['passes']:.0f} passes, {d['texts_per_pass']:.1f} texts/pass; "
        f"{seen['collections']:.0f} collections, {d['requests_per_collection']:.2f} "
        f"requests and {d['texts_per_collection']:.1f} texts each; padding "
        f"{d['padding_ratio']:.2f}x (padded/real tokens); forward {seen['seconds']:.1f} s"
    )


def histogram(seen: Counter[str]) -> list[str]:
    sizes = sorted(int(k.removeprefix("size_le_")) for k in seen if k.startswith("size_le_"))
    if not sizes:
        return []
    top = max(seen[f"size_le_{s}"] for s in sizes)
    out = []
    for size in sizes:
        count = seen[f"size_le_{size}"]
        span = f"{size // 2 + 1}-{size}" if size > 2 else f"{size}"
        out.append(f"    texts/pass {span:>7}: {count:6.0f} {'#' * round(40 * count / top)}")
    return out


# --- clients ----------------------------------------------------------------------------


def check(response: requests.Response) -> requests.Response:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.status_code} from {response.url}: {response.text[:300]}")
    return response


def run_clients(url: str, bodies: list[list[str]], clients: int) -> tuple[float, list[float]]:
    """Sync requests (no-store) from `clients` threads, each taking the next body until
    none is left; returns (seconds, per-request latencies)."""
    todo = list(reversed(bodies))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(clients + 1)

    def one(session: requests.Session, texts: list[str]) -> float:
        payload = orjson.dumps({"model": MODEL, "input": texts})
        started = time.perf_counter()
        response = session.post(f"{url}/api/v1/embeddings", data=payload, timeout=HTTP_TIMEOUT_S)
        took = time.perf_counter() - started
        if check(response).headers.get("X-Cache") == "hit":
            raise RuntimeError("answered from the cache despite no-store")
        if len(orjson.loads(response.content)["data"]) != len(texts):
            raise RuntimeError("the vector count differs from the input count")
        return took

    def client() -> None:
        with requests.Session() as session:
            session.headers.update(NO_STORE)
            ready.wait()
            try:
                while True:
                    with lock:
                        if not todo or errors:
                            return
                        texts = todo.pop()
                    took = one(session, texts)
                    with lock:
                        latencies.append(took)
            except BaseException as error:  # re-raised in the caller's thread
                errors.append(error)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed, latencies


def decode_rows(data: list[dict[str, Any]]) -> np.ndarray:
    rows = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data]
    return np.stack(rows)


def async_job(url: str, texts: list[str]) -> tuple[float, np.ndarray]:
    """All texts as one job (several past MAX_INPUTS), base64 vectors, polled every 20 ms:
    seconds from the POST to the (last) job seen succeeded, and the vectors."""
    parts = chunks(texts, MAX_INPUTS)
    with requests.Session() as session:
        session.headers.update(NO_STORE)
        started = time.perf_counter()
        status_urls = []
        for part in parts:
            body = orjson.dumps({"model": MODEL, "input": part, "encoding_format": "base64"})
            answer = check(session.post(f"{url}/api/v1/jobs", data=body, timeout=HTTP_TIMEOUT_S))
            status_urls.append(orjson.loads(answer.content)["status_url"])
        found = []
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for status_url in status_urls:
            while True:
                answer = check(session.get(f"{url}{status_url}", timeout=HTTP_TIMEOUT_S))
                job = orjson.loads(answer.content)
                if job["status"] == "succeeded":
                    break
                if job["status"] in ("failed", "cancelled"):
                    raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{status_url} not done in {JOB_TIMEOUT_S:g} s")
                time.sleep(POLL_S)
            found.append(decode_rows(job["result"]["data"]))
        elapsed = time.perf_counter() - started
    vectors = np.concatenate(found)
    if len(vectors) != len(texts):
        raise RuntimeError(f"{len(texts)} texts, {len(vectors)} vectors")
    return elapsed, vectors


def warm_up(url: str, texts: list[str]) -> None:
    """Requests of each kind, so no timed run pays for first use."""
    run_clients(url, [[t] for t in texts[:16]], 4)
    run_clients(url, chunks(texts[: 4 * CHUNK]), 2)
    async_job(url, texts[: 2 * CHUNK])


# --- wrk --------------------------------------------------------------------------------

WRK_SCRIPT = """-- written by bench/throughput.py: POST the same body on every request
local f = assert(io.open([==[{body}]==], "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""
_SECONDS_PER = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = r"([\d.]+)(us|ms|s|m|h)\b"
_SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"


def _seconds(number: str, unit: str) -> float:
    return float(number) * _SECONDS_PER[unit]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests, seconds, 2xx answers per second, p50 (ms), non-2xx and socket errors."""
    done = re.search(rf"(\d+) requests in {_QUANTITY}", output)
    p50 = re.search(rf"^\s*50%\s+{_QUANTITY}", output, re.MULTILINE)
    if not done or not p50:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    count, seconds = int(done.group(1)), _seconds(done.group(2), done.group(3))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx = int(bad.group(1)) if bad else 0
    sockets = re.search(_SOCKET_ERRORS, output)
    return {
        "requests": count,
        "seconds": seconds,
        "ok_per_second": (count - non_2xx) / seconds,
        "p50_ms": 1000 * _seconds(p50.group(1), p50.group(2)),
        "non_2xx": non_2xx,
        "socket_errors": sum(int(n) for n in sockets.groups()) if sockets else 0,
    }


class CacheHits:
    """One 32-text request, primed into the cache, then repeated by wrk."""

    def __init__(self, stack: Stack, texts: list[str], fmt: str, folder: Path) -> None:
        self.stack = stack
        self.url = f"{stack.url}/api/v1/embeddings"
        self.texts = len(texts)
        body = orjson.dumps({"model": MODEL, "input": texts, "encoding_format": fmt})
        (folder / f"body-{fmt}.json").write_bytes(body)
        self.script = folder / f"post-{fmt}.lua"
        self.script.write_text(WRK_SCRIPT.format(body=folder / f"body-{fmt}.json"))
        # The first call computes and stores; the next ones (both gunicorn processes,
        # most likely) must be hits.
        for i in range(5):
            answer = check(requests.post(self.url, data=body, headers=JSON, timeout=60))
            if i and answer.headers.get("X-Cache") != "hit":
                raise RuntimeError(f"a primed request was no cache hit: {answer.headers}")

    def run(self, seconds: int, connections: int, threads: int) -> dict[str, float]:
        before = int(self.stack.client.hget(keys.CACHE_STATS, "hits") or 0)
        command = [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "10s", "-s", str(self.script), self.url,
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        found = parse_wrk(done.stdout)
        hits = int(self.stack.client.hget(keys.CACHE_STATS, "hits") or 0) - before
        found["hit_requests"] = hits / self.texts
        if found["non_2xx"] or found["socket_errors"]:
            print(
                f"    wrk: {found['non_2xx']:.0f} non-2xx answers (not counted), "
                f"{found['socket_errors']:.0f} socket errors",
                flush=True,
            )
        return found


# --- raw --------------------------------------------------------------------------------


def normalized(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(normalized(a) * normalized(b), axis=1)))


def measure_raw(texts: list[str], singles: list[str], repeat: int, figures: Figures) -> np.ndarray:
    """The raw figures, `repeat` times; returns the whole list's vectors. The model is
    released on return."""
    model = raw_encode.load_model()
    model.encode(texts[:CHUNK], batch_size=CHUNK)
    for text in singles[:10]:
        model.encode([text], batch_size=CHUNK)
    vectors = np.empty(0)
    for run in range(1, repeat + 1):
        print(f"raw, repeat {run}/{repeat}", flush=True)
        with OthersCpu() as others:
            seconds = []
            started = time.perf_counter()
            for text in singles:
                one = time.perf_counter()
                model.encode([text], batch_size=CHUNK)
                seconds.append(time.perf_counter() - one)
            elapsed = time.perf_counter() - started
        label = f"raw sequential single text ({len(singles)})"
        figures.add("raw_single", label, "texts/s", len(singles) / elapsed, others.percent)
        p50 = 1000 * float(np.median(seconds))
        figures.add("raw_single_p50", "raw single text, p50", "ms", p50, others.percent)
        with OthersCpu() as others:
            rate = raw_encode.chunked(model, texts)
        figures.add("raw_chunks", "raw chunks of 32", "texts/s", rate, others.percent)
        with OthersCpu() as others:
            started = time.perf_counter()
            vectors = model.encode(texts, batch_size=CHUNK)
            elapsed = time.perf_counter() - started
        label = "raw whole list, batch 32"
        figures.add("raw_whole", label, "texts/s", len(texts) / elapsed, others.percent)
    return normalized(vectors)


# --- the service scenarios --------------------------------------------------------------


def measure_singles(stack: Stack, singles: list[str], clients: int, figures: Figures) -> None:
    with OthersCpu() as others:
        elapsed, latencies = run_clients(stack.url, [[t] for t in singles], clients)
    p50, p95 = np.percentile(np.array(latencies) * 1000, [50, 95])
    label = f"{clients} clients x 1 passage"
    figures.add("singles", label, "texts/s", len(singles) / elapsed, others.percent)
    figures.add("singles_p50", f"{label}, p50", "ms", float(p50), others.percent)
    figures.add("singles_p95", f"{label}, p95", "ms", float(p95), others.percent)


def measure_chunks(stack: Stack, texts: list[str], clients: int, figures: Figures) -> None:
    with OthersCpu() as others:
        elapsed, latencies = run_clients(stack.url, chunks(texts), clients)
    p50 = float(np.percentile(np.array(latencies) * 1000, 50))
    label = f"{clients} clients x 32 passages"
    figures.add("chunks", label, "texts/s", len(texts) / elapsed, others.percent)
    figures.add("chunks_p50", f"{label}, p50", "ms", p50, others.percent)


def measure_job(stack: Stack, texts: list[str], backend: str, figures: Figures) -> np.ndarray:
    with OthersCpu() as others:
        elapsed, vectors = async_job(stack.url, texts)
    label = f"one async job, {backend}"
    figures.add(f"job_{backend}", label, "texts/s", len(texts) / elapsed, others.percent)
    return vectors


def measure_hits(
    hits: CacheHits, fmt: str, args: argparse.Namespace, figures: Figures, log: list[object]
) -> None:
    with OthersCpu() as others:
        found = hits.run(args.wrk_seconds, args.wrk_connections, args.wrk_threads)
    log.append({"format": fmt, **found})
    label = f"cache hits, wrk -c{args.wrk_connections}, {fmt}"
    figures.add(f"hits_{fmt}", label, "req/s", found["ok_per_second"], others.percent)
    figures.add(f"hits_{fmt}_p50", f"{label}, p50", "ms", found["p50_ms"], others.percent)
    print(
        f"    {found['hit_requests']:.0f} of {found['requests']:.0f} requests were cache hits "
        "(the API's hit counter / 32)",
        flush=True,
    )


def run_service(
    args: argparse.Namespace,
    texts: list[str],
    singles: list[str],
    reference: np.ndarray,
    figures: Figures,
    batches: BatchLog,
    notes: dict[str, Any],
) -> None:
    wrk = shutil.which("wrk")
    if not wrk:
        print(
            "wrk is not installed: the cache-hit figures are skipped (install it with "
            "`apt-get install -y wrk` on Debian/Ubuntu, `brew install wrk` on macOS)"
        )
    with Stack("throughput") as stack, tempfile.TemporaryDirectory() as folder:
        print(f"service at {stack.url}, redis at {stack.redis.url}, logs in {stack.dir}")
        print("warm-up (torch worker)", flush=True)
        warm_up(stack.url, texts)
        formats = ("base64", "float") if wrk else ()
        hits = {fmt: CacheHits(stack, texts[:CHUNK], fmt, Path(folder)) for fmt in formats}
        wrk_log: list[object] = []
        vectors: dict[str, np.ndarray] = {}
        for run in range(1, args.repeat + 1):
            print(f"service (torch worker), repeat {run}/{args.repeat}", flush=True)
            batches.run(
                stack,
                f"{args.clients} clients x 1 passage",
                lambda: measure_singles(stack, singles, args.clients, figures),
            )
            batches.run(
                stack,
                f"{args.chunk_clients} clients x 32 passages",
                lambda: measure_chunks(stack, texts, args.chunk_clients, figures),
            )
            vectors["torch"] = batches.run(
                stack, "one async job, torch", lambda: measure_job(stack, texts, "torch", figures)
            )
            for fmt, hit in hits.items():
                batches.run(
                    stack,
                    f"cache hits ({fmt})",
                    lambda hit=hit, fmt=fmt: measure_hits(hit, fmt, args, figures, wrk_log),
                )
        print("restarting the worker with backend onnx (first use exports the model)")
        took = stack.restart_worker("onnx")
        notes["onnx_worker_start_seconds"] = took
        print(f"onnx worker ready in {took:.1f} s; warm-up", flush=True)
        warm_up(stack.url, texts)
        for run in range(1, args.repeat + 1):
            print(f"service (onnx worker), repeat {run}/{args.repeat}", flush=True)
            vectors["onnx"] = batches.run(
                stack, "one async job, onnx", lambda: measure_job(stack, texts, "onnx", figures)
            )
    notes["wrk"] = wrk_log
    for backend, found in vectors.items():
        notes[f"min_cosine_job_{backend}_vs_raw_torch"] = min_cosine(found, reference)


# --- the report -------------------------------------------------------------------------

ROWS: tuple[tuple[str, str | None], ...] = (  # (service figure, raw figure beside it)
    ("singles", "raw_single"),
    ("singles_p50", "raw_single_p50"),
    ("singles_p95", "raw_single_p50"),
    ("chunks", "raw_chunks"),
    ("chunks_p50", None),
    ("job_torch", "raw_whole"),
    ("job_onnx", "raw_whole"),
    ("hits_base64", None),
    ("hits_base64_p50", None),
    ("hits_float", None),
    ("hits_float_p50", None),
)
OTHERS_NOTE = [
    "others' CPU: share of all cores that processes outside the bench (and steal) took",
    "while the figure ran, mean (highest).",
]


def ratio(figures: Figures, key: str, raw: str | None) -> float | None:
    if raw is None or key not in figures or raw not in figures:
        return None
    return figures[key].mean / figures[raw].mean


def _line(*cells: str) -> str:
    widths = (38, 30, 11, 34, 30, 11, 7)
    return " ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))


def table(figures: Figures, rows: tuple[tuple[str, str | None], ...]) -> list[str]:
    """Each service figure beside the raw figure it is compared with, and their ratio."""
    head = ("service", "mean [min-max]", "others CPU", "raw", "mean [min-max]", "others CPU")
    lines = [_line(*head, "ratio"), "-" * 207]
    for key, raw in rows:
        if key not in figures:
            continue
        fig, ref = figures[key], figures.get(raw) if raw else None
        value = ratio(figures, key, raw)
        cells = (ref.label, ref.cell(), ref.others_cell()) if ref else ("", "", "")
        shown = f"{value:.2f}x" if value is not None else ""
        lines.append(_line(fig.label, fig.cell(), fig.others_cell(), *cells, shown))
    return lines


def at_least(name: str, value: float | None, limit: float, unit: str) -> Bar:
    return Bar(name, value, limit, unit, None if value is None else value >= limit)


def at_most(name: str, value: float | None, limit: float, unit: str) -> Bar:
    return Bar(name, value, limit, unit, None if value is None else value <= limit)


def bars(figures: Figures, clients: int, chunk_clients: int) -> list[Bar]:
    """The acceptance bars, judged on the means."""
    jobs = {b: r for b in ("torch", "onnx") if (r := ratio(figures, f"job_{b}", "raw_whole"))}
    best = max(jobs, key=jobs.__getitem__) if jobs else None
    singles = f"{clients} clients x 1 passage"
    return [
        at_least(
            f"{singles} >= {BAR_SINGLES_RATIO:g}x raw sequential single text",
            ratio(figures, "singles", "raw_single"),
            BAR_SINGLES_RATIO,
            "x",
        ),
        at_most(
            f"{singles}, p95 <= {BAR_SINGLES_P95_MS:g} ms",
            figures.mean("singles_p95"),
            BAR_SINGLES_P95_MS,
            " ms",
        ),
        at_least(
            f"{chunk_clients} clients x 32 passages >= {BAR_CHUNKS_RATIO:g}x raw chunks of 32",
            ratio(figures, "chunks", "raw_chunks"),
            BAR_CHUNKS_RATIO,
            "x",
        ),
        at_least(
            f"one async job, faster backend ({best}) >= {BAR_JOB_RATIO:g}x raw whole list",
            jobs.get(best) if best else None,
            BAR_JOB_RATIO,
            "x",
        ),
        at_least(
            f"cache hits (base64) >= {BAR_HITS_RPS:g} req/s",
            figures.mean("hits_base64"),
            BAR_HITS_RPS,
            " req/s",
        ),
        at_most(
            f"cache hits (base64), p50 <= {BAR_HITS_P50_MS:g} ms",
            figures.mean("hits_base64_p50"),
            BAR_HITS_P50_MS,
            " ms",
        ),
    ]


def figures_dict(figures: Figures) -> dict[str, object]:
    return {
        key: asdict(fig) | {"mean": fmean(s), "min": min(s), "max": max(s)}
        for key, fig in figures.items()
        if (s := fig.samples)
    }


def write_json(stem: str, data: dict[str, Any]) -> Path:
    """bench/results/<stem>-<timestamp>.json"""
    path = RESULTS_DIR / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data | {"bars": [asdict(bar) for bar in data.get("bars", [])]}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=float) + "\n")
    return path


def verdict(results: list[Bar]) -> int:
    """Exit status: 1 when a bar fails."""
    return 1 if any(bar.passed is False for bar in results) else 0


# --- main -------------------------------------------------------------------------------


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSONL with a text field")
    add("--limit", type=positive, default=2000, help="passages (the first ones)")
    add("--singles", type=positive, default=800, help="one-passage requests (and raw encodes)")
    add("--clients", type=positive, default=16, help="clients sending one passage each")
    add("--chunk-clients", type=positive, default=4, help="clients sending 32 passages each")
    add("--repeat", type=positive, default=2, help="runs of each figure, at least 2")
    add("--wrk-seconds", type=positive, default=10)
    add("--wrk-connections", type=positive, default=8)
    add("--wrk-threads", type=positive, default=2)
    args = parser.parse_args(argv)
    if args.repeat < 2:
        parser.error("--repeat must be at least 2, to show a spread")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    texts = load_texts(args.corpus, args.limit)
    singles = texts[: args.singles]
    config = {
        "started": datetime.now().isoformat(timespec="seconds"),
        "corpus": str(args.corpus),
        "passages": len(texts),
        "singles": len(singles),
        "clients": args.clients,
        "chunk_clients": args.chunk_clients,
        "repeat": args.repeat,
        "wrk": {"seconds": args.wrk_seconds, "connections": args.wrk_connections,
                "threads": args.wrk_threads},
        "service_env": SERVICE_ENV,
        "worker": WORKER,
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }  # fmt: skip
    print(
        f"{len(texts)} passages from {args.corpus}, {len(singles)} one-passage requests, "
        f"{args.repeat} repeats; {os.cpu_count()} cores shared by the raw model, the API, "
        f"the worker and the clients; load average {os.getloadavg()[0]:.1f}. Raw first.",
        flush=True,
    )
    figures, batches, notes = Figures(), BatchLog(), {}
    reference = measure_raw(texts, singles, args.repeat, figures)
    gc.collect()
    run_service(args, texts, singles, reference, figures, batches, notes)
    results = bars(figures, args.clients, args.chunk_clients)
    print("\n" + "\n".join([*table(figures, ROWS), "", *OTHERS_NOTE]))
    print("\nagreement with the raw torch vectors (all passages): lowest cosine")
    for backend in ("torch", "onnx"):
        if (key := f"min_cosine_job_{backend}_vs_raw_torch") in notes:
            print(f"  one async job, {backend:<5} {notes[key]:.6f}")
    print("\nbatches the worker formed, per scenario (texts/pass: the size_le_ buckets)")
    print("\n".join("  " + line for line in batches.lines()))
    print("\n" + "\n".join(bar_lines(results)))
    comparisons = [
        {"service": key, "raw": raw, "ratio": ratio(figures, key, raw)}
        for key, raw in ROWS
        if raw and key in figures
    ]
    path = write_json("throughput", {
        "config": config, "figures": figures_dict(figures), "comparisons": comparisons,
        "batches": batches.as_dict(), "notes": notes, "bars": results,
    })  # fmt: skip
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return verdict(results)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
