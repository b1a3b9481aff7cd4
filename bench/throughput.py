"""Throughput: the service under concurrent load, async jobs per backend, and cache hits.

    .venv/bin/python bench/throughput.py [--limit 2000] [--singles 800] [--repeat 2]

Raw baselines first, in this process (SentenceTransformer on the CPU, torch's default
threads): sequential single-text encode, encode in consecutive chunks of 32, encode of the
whole list (batch_size 32). The raw model is released before the service starts.

Then Redis (embedded), the API (gunicorn, WEB_CONCURRENCY=2) and one CPU worker
(`--pool threads --concurrency 16`, the backend the built-in registry gives the model) on
free ports, with generous rate limits, and:

  - `--clients` (16) concurrent clients, one passage per request, `--singles` (800)
    requests (Cache-Control: no-store): texts/s, p50, p95;
  - `--chunk-clients` (4) concurrent clients, 32 passages per request, over all passages;
  - all passages as ONE async job (POST /api/v1/jobs, polled every 20 ms, base64
    answer) through that backend and, after a worker restart, the other of torch and onnx
    (a first onnx start exports the model into MODEL_CACHE_DIR, outside any timing), and
    the lowest cosine between each job's vectors and the raw torch vectors;
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
import gc
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import requests

import raw_encode
import wrk
from batches import BatchLog
from clients import JSON, async_job, run_clients, warm_up
from common import redis_keys
from http_load import check
from local_stack import MANY_CLIENTS_ENV, MODEL, WORKER, LocalService, model_entry
from machine import OthersCpu
from report import (
    Bar,
    Figures,
    Row,
    at_least,
    at_most,
    comparisons,
    finish,
    others_note,
    ratio,
    table,
)
from suite import DEFAULT_CORPUS, check_repeat, install_signal_handlers, positive, run
from workload import CHUNK, chunks, load_texts

BAR_SINGLES_RATIO = 1.5
BAR_SINGLES_P95_MS = 400.0
BAR_CHUNKS_RATIO = 1.5
BAR_JOB_RATIO = 1.3
BAR_HITS_RPS = 1000.0
BAR_HITS_P50_MS = 5.0


class CacheHits:
    """One 32-text request, primed into the cache, then repeated by wrk."""

    def __init__(self, stack: LocalService, texts: list[str], fmt: str, folder: Path) -> None:
        self.stack = stack
        self.url = f"{stack.url}/api/v1/embeddings"
        self.texts = len(texts)
        body = orjson.dumps({"model": MODEL, "input": texts, "encoding_format": fmt})
        self.script = wrk.same_body_script(folder, f"hits-{fmt}", body, {})
        # The first call computes and stores; the next ones (both gunicorn processes,
        # most likely) must be hits.
        for i in range(5):
            answer = check(requests.post(self.url, data=body, headers=JSON, timeout=60))
            if i and answer.headers.get("X-Cache") != "hit":
                raise RuntimeError(f"a primed request was no cache hit: {answer.headers}")

    def run(self, seconds: int, connections: int, threads: int) -> dict[str, float]:
        before = int(self.stack.client.hget(redis_keys.CACHE_STATS, "hits") or 0)
        found = wrk.run(self.url, self.script, seconds, connections, threads)
        hits = int(self.stack.client.hget(redis_keys.CACHE_STATS, "hits") or 0) - before
        found["hit_requests"] = hits / self.texts
        if found["non_2xx"] or found["socket_errors"]:
            print(
                f"    wrk: {found['non_2xx']:.0f} non-2xx answers (not counted), "
                f"{found['socket_errors']:.0f} socket errors",
                flush=True,
            )
        return found


# --- raw --------------------------------------------------------------------------------


def measure_raw(texts: list[str], singles: list[str], repeat: int, figures: Figures) -> np.ndarray:
    """The raw figures, `repeat` times; returns the whole list's vectors, unit length. The
    model is released on return."""
    model = raw_encode.load_model()
    raw_encode.warm_up(model, texts, singles)
    vectors = np.empty(0)
    for run_number in range(1, repeat + 1):
        print(f"raw, repeat {run_number}/{repeat}", flush=True)
        with OthersCpu() as others:
            seconds = raw_encode.single_latencies(model, singles)
        label = f"raw sequential single text ({len(singles)})"
        figures.add("raw_single", label, "texts/s", len(singles) / sum(seconds), others.percent)
        figures.percentiles("raw_single", "raw single text,", seconds, others.percent, (50,))
        figures.measure(
            "raw_chunks", "raw chunks of 32", "texts/s", lambda: raw_encode.chunked(model, texts)
        )
        with OthersCpu() as others:
            rate, vectors = raw_encode.encode_whole(model, texts)
        figures.add("raw_whole", "raw whole list, batch 32", "texts/s", rate, others.percent)
    return raw_encode.normalized(vectors)


# --- the service scenarios --------------------------------------------------------------


def measure_clients(
    stack: LocalService,
    bodies: list[list[str]],
    clients: int,
    figure: tuple[str, str, tuple[int, ...]],
    figures: Figures,
) -> None:
    """texts/s and latency percentiles of `clients` clients sending `bodies`; `figure`:
    the key, the label and the percentiles."""
    key, label, points = figure
    with OthersCpu() as others:
        elapsed, latencies = run_clients(stack.url, bodies, clients)
    count = sum(len(body) for body in bodies)
    figures.add(key, label, "texts/s", count / elapsed, others.percent)
    figures.percentiles(key, f"{label},", latencies, others.percent, points)


def measure_job(
    stack: LocalService, texts: list[str], backend: str, figures: Figures
) -> np.ndarray:
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


class Scenarios:
    """The service figures against one stack, each run between batch-counter reads."""

    def __init__(
        self, args: argparse.Namespace, stack: LocalService, figures: Figures, batches: BatchLog
    ) -> None:
        self.args, self.stack, self.figures, self.batches = args, stack, figures, batches
        self.wrk_log: list[object] = []
        self.vectors: dict[str, np.ndarray] = {}

    def clients(
        self, bodies: list[list[str]], clients: int, figure: tuple[str, str, tuple[int, ...]]
    ) -> None:
        """`figure`: its key, its label (the scenario's name too) and its percentiles."""
        self.batches.run(
            self.stack,
            figure[1],
            lambda: measure_clients(self.stack, bodies, clients, figure, self.figures),
        )

    def job(self, texts: list[str], backend: str) -> None:
        self.vectors[backend] = self.batches.run(
            self.stack,
            f"one async job, {backend}",
            lambda: measure_job(self.stack, texts, backend, self.figures),
        )

    def hits(self, fmt: str, hits: CacheHits) -> None:
        self.batches.run(
            self.stack,
            f"cache hits ({fmt})",
            lambda: measure_hits(hits, fmt, self.args, self.figures, self.wrk_log),
        )


def main_rounds(
    scenarios: Scenarios, texts: list[str], singles: list[str], hits: dict[str, CacheHits]
) -> None:
    """Every scenario, on the worker's first backend (the registry's)."""
    args, backend = scenarios.args, scenarios.stack.backend
    one = ("singles", f"{args.clients} clients x 1 passage", (50, 95))
    many = ("chunks", f"{args.chunk_clients} clients x 32 passages", (50,))
    for number in range(1, args.repeat + 1):
        print(f"service ({backend} worker), repeat {number}/{args.repeat}", flush=True)
        scenarios.clients([[text] for text in singles], args.clients, one)
        scenarios.clients(chunks(texts), args.chunk_clients, many)
        scenarios.job(texts, backend)  # type: ignore[arg-type]
        for fmt, hit in hits.items():
            scenarios.hits(fmt, hit)


def other_backend_rounds(
    scenarios: Scenarios, texts: list[str], backend: str, notes: dict[str, Any]
) -> None:
    """The async job again, after a restart of the worker with the other backend."""
    print(f"restarting the worker with backend {backend} (a first onnx use exports the model)")
    took = scenarios.stack.restart_worker(backend)
    notes[f"{backend}_worker_start_seconds"] = took
    print(f"{backend} worker ready in {took:.1f} s; warm-up", flush=True)
    warm_up(scenarios.stack.url, texts)
    for number in range(1, scenarios.args.repeat + 1):
        print(f"service ({backend} worker), repeat {number}/{scenarios.args.repeat}", flush=True)
        scenarios.job(texts, backend)


def find_wrk() -> str | None:
    wrk = shutil.which("wrk")
    if not wrk:
        print(
            "wrk is not installed: the cache-hit figures are skipped (install it with "
            "`apt-get install -y wrk` on Debian/Ubuntu, `brew install wrk` on macOS)"
        )
    return wrk


def run_service(
    args: argparse.Namespace,
    texts: list[str],
    singles: list[str],
    reference: np.ndarray,
    figures: Figures,
    batches: BatchLog,
    notes: dict[str, Any],
) -> None:
    formats = ("base64", "float") if find_wrk() else ()
    first = str(model_entry().get("backend", "torch"))
    other = "torch" if first != "torch" else "onnx"
    stack = LocalService("throughput", backend=first, env=MANY_CLIENTS_ENV)
    with stack, tempfile.TemporaryDirectory() as folder:
        print(stack.describe())
        print(f"warm-up ({first} worker)", flush=True)
        warm_up(stack.url, texts)
        hits = {fmt: CacheHits(stack, texts[:CHUNK], fmt, Path(folder)) for fmt in formats}
        scenarios = Scenarios(args, stack, figures, batches)
        main_rounds(scenarios, texts, singles, hits)
        other_backend_rounds(scenarios, texts, other, notes)
    notes["wrk"] = scenarios.wrk_log
    for backend, found in scenarios.vectors.items():
        notes[f"min_cosine_job_{backend}_vs_raw_torch"] = raw_encode.min_cosine(found, reference)


# --- the report -------------------------------------------------------------------------

ROWS = (
    Row("singles", "raw_single"),
    Row("singles_p50", "raw_single_p50"),
    Row("singles_p95", "raw_single_p50"),
    Row("chunks", "raw_chunks"),
    Row("chunks_p50"),
    Row("job_torch", "raw_whole"),
    Row("job_onnx", "raw_whole"),
    Row("hits_base64"),
    Row("hits_base64_p50"),
    Row("hits_float"),
    Row("hits_float_p50"),
)


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


def report_lines(figures: Figures, batches: BatchLog, notes: dict[str, Any]) -> list[str]:
    """The table, the agreement with raw and the worker's batches."""
    lines = ["", *table(figures, ROWS), "", *others_note(), ""]
    lines.append("agreement with the raw torch vectors (all passages): lowest cosine")
    for backend in ("torch", "onnx"):
        if (key := f"min_cosine_job_{backend}_vs_raw_torch") in notes:
            lines.append(f"  one async job, {backend:<5} {notes[key]:.6f}")
    return [*lines, "", *batches.lines()]


# --- main -------------------------------------------------------------------------------


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
    check_repeat(parser, args)
    return args


def header(args: argparse.Namespace, texts: list[str], singles: list[str]) -> dict[str, object]:
    """Print what is measured where; return it for the JSON file."""
    print(
        f"{len(texts)} passages from {args.corpus}, {len(singles)} one-passage requests, "
        f"{args.repeat} repeats; {os.cpu_count()} cores shared by the raw model, the API, "
        f"the worker and the clients; load average {os.getloadavg()[0]:.1f}. Raw first.",
        flush=True,
    )
    return {
        "started": datetime.now().isoformat(timespec="seconds"),
        "corpus": str(args.corpus),
        "passages": len(texts),
        "singles": len(singles),
        "clients": args.clients,
        "chunk_clients": args.chunk_clients,
        "repeat": args.repeat,
        "wrk": {"seconds": args.wrk_seconds, "connections": args.wrk_connections,
                "threads": args.wrk_threads},
        "service_env": MANY_CLIENTS_ENV,
        "worker": WORKER,
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    texts = load_texts(args.corpus, args.limit)
    singles = texts[: args.singles]
    config = header(args, texts, singles)
    figures, batches, notes = Figures(), BatchLog(), {}
    reference = measure_raw(texts, singles, args.repeat, figures)
    gc.collect()
    run_service(args, texts, singles, reference, figures, batches, notes)
    print("\n".join(report_lines(figures, batches, notes)))
    data = {"config": config, "figures": figures.as_dict(),
            "comparisons": comparisons(figures, ROWS), "batches": batches.as_dict(),
            "notes": notes}  # fmt: skip
    return finish("throughput", data, bars(figures, args.clients, args.chunk_clients))


if __name__ == "__main__":
    run(main)
