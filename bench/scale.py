"""Scale: a bulk index job of --docs documents into a parquet sink and a pgvector sink, and
the parquet job again with its worker SIGKILLed halfway.

    .venv/bin/python bench/scale.py [--docs 50000] [--passages 2] [--max-tokens 64]

Documents are built from the shared corpus: each joins --passages passages picked at
random (seed 7), so that they chunk at --max-tokens. Raw first, in this process:
SentenceTransformer.encode of a --raw-sample of the same chunks as one list (chunks/s).
Then Redis, the API and one CPU worker (bench/local_stack.py) with two sinks: a parquet
directory and PostgreSQL with pgvector (the pgserver wheel). Each run uploads the
documents as one NDJSON stream and is timed from the POST to the job seen done; meanwhile
a sampler reads Redis used_memory and the API's and worker's RSS every second, and a
client sends one-text sync calls (each text new, Cache-Control: no-store) every 0.25 s.
Reported per run: chunks/s and its ratio to raw, Redis peak growth, used_memory grown per
chunk once the job is done (with the MEMORY USAGE of the job records the sync calls leave
for JOB_TTL_SECONDS, by design), MEMORY USAGE of the job's own keys per chunk, peak RSS,
the sync calls' p50/p95. The killed run: the worker
is SIGKILLed once half the chunks are done and a new one started at once (a replacement
pod); its time to done is compared with the clean parquet run's, and its rows are checked
exactly once, and the time until the messages the dead worker held (its last heartbeat's
delivery tags) are back on the queue is the bar. The pgvector run then waits (at most
--index-wait s) for the HNSW index the job's end builds, and reports how long that took.

Writes bench/results/scale-<timestamp>.json; exits 1 when a bar fails.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.dataset as ds
import requests

import raw_encode
from common import redis_keys
from common.chunking import split
from common.index_jobs import PARTS
from local_stack import MANY_CLIENTS_ENV, LocalService, model_spec
from machine import tree_rss_mib
from report import Figures, at_least, at_most, finish
from suite import DEFAULT_CORPUS, install_signal_handlers, positive, run

POLL_S = 0.5
SAMPLE_S = 1.0
SYNC_EVERY_S = 0.25
JOB_TIMEOUT_S = 6 * 3600.0
DSN_ENV = "BENCH_SCALE_PG_DSN"
BAR_BYTES_PER_CHUNK = 64.0
BAR_SYNC_P95_MS = 500.0
BAR_GIVEN_BACK_S = 60.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--docs", type=positive, default=50_000)
    parser.add_argument("--passages", type=positive, default=2, help="passages per document")
    parser.add_argument("--max-tokens", type=positive, default=64, help="chunk size")
    parser.add_argument("--raw-sample", type=positive, default=4000, help="chunks encoded raw")
    parser.add_argument("--index-wait", type=positive, default=900, help="s to wait for HNSW")
    return parser.parse_args()


def build_documents(corpus: Path, count: int, per_doc: int, path: Path) -> None:
    """`count` documents of `per_doc` random passages each, as NDJSON at `path`."""
    passages = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            text = " ".join(rng.choice(passages) for _ in range(per_doc))
            out.write(json.dumps({"id": f"doc-{i}", "text": text, "metadata": {"n": i}}) + "\n")


def raw_rate(path: Path, sample: int, max_tokens: int) -> float:
    """chunks/s of SentenceTransformer.encode over the first `sample` chunks, one list."""
    tokenizer = model_spec().tokenizer_file()
    texts: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            text = json.loads(line)["text"]
            texts += [text[c.start : c.end] for c in split(tokenizer, text, max_tokens, 0)]
            if len(texts) >= sample:
                break
    model = raw_encode.load_model()
    model.encode(texts[:64], batch_size=32)
    rate, _ = raw_encode.encode_whole(model, texts[:sample])
    del model
    return rate


@dataclass
class Sampler:
    """Redis used_memory and the API's and worker's RSS every second; sync-call latencies."""

    service: LocalService
    memory: list[tuple[float, int, float, float]] = field(default_factory=list)
    sync_seconds: list[float] = field(default_factory=list)
    sync_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Sampler:
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._sync, daemon=True)]  # fmt: skip
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _sample(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            used = int(self.service.client.info("memory")["used_memory"])
            api = tree_rss_mib(self.service.api_pid)
            worker = tree_rss_mib(self.service.worker_pid) if self.service.worker else 0.0
            self.memory.append((time.monotonic() - started, used, api, worker))
            self._stop.wait(SAMPLE_S)

    def _sync(self) -> None:
        session = requests.Session()
        url = f"{self.service.url}/api/v1/embeddings"
        while not self._stop.wait(SYNC_EVERY_S):
            body = {"input": f"a live query {uuid.uuid4().hex} about the standard library"}
            started = time.perf_counter()
            try:
                answer = session.post(url, json=body, headers={"Cache-Control": "no-store"},
                                      timeout=60)  # fmt: skip
                ok = answer.status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                self.sync_seconds.append(time.perf_counter() - started)
            else:
                self.sync_errors += 1


@dataclass(frozen=True)
class Outcome:
    job: dict[str, Any]
    seconds: float
    sampler: Sampler
    redis_before: int
    redis_after: int
    job_keys_bytes: int
    sync_jobs_bytes: int
    """What the sync calls' own job records hold (kept for JOB_TTL_SECONDS, by design)."""
    given_back_s: float | None = None
    """After a kill: seconds until every message the dead worker held was back on a queue."""


def held_tags(service: LocalService) -> set[bytes]:
    """The delivery tags the service's worker held at its last heartbeat."""
    client = service.client
    for raw in client.hvals(redis_keys.WORKERS):
        info = json.loads(raw)
        if info.get("pid") == service.worker_pid:
            held = client.hget(redis_keys.WORKERS_HELD, info["name"])
            return {tag.encode() for tag in json.loads(held)["tags"]} if held else set()
    return set()


def job_records(service: LocalService) -> set[bytes]:
    return set(service.client.scan_iter(redis_keys.job("*"), count=1000))


def job_keys_bytes(service: LocalService, job_id: str) -> int:
    """MEMORY USAGE of every key of the job (its hash and its per-batch parts)."""
    client = service.client
    names = [redis_keys.index_job(job_id), *(redis_keys.index_job_part(job_id, p) for p in PARTS)]
    return sum(int(client.memory_usage(name) or 0) for name in names)


def index(
    service: LocalService, docs: Path, sink: str, max_tokens: int, kill_at: float | None = None
) -> Outcome:
    """Upload, then poll until the job ends; with `kill_at`, SIGKILL the worker once that
    share of the chunks is done and start another."""
    session = requests.Session()
    session.get(f"{service.url}/health", timeout=30)  # connections open before the baseline
    time.sleep(2)
    before = int(service.client.info("memory")["used_memory"])
    records = job_records(service)
    with Sampler(service) as sampler:
        started = time.perf_counter()
        with docs.open("rb") as body:
            answer = session.post(
                f"{service.url}/api/v1/index-jobs", data=body,
                params={"sink": sink, "max_tokens": str(max_tokens)},
                headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"},
                timeout=3600,
            )  # fmt: skip
        answer.raise_for_status()
        status_url = f"{service.url}{answer.json()['status_url']}"
        deadline = time.monotonic() + JOB_TIMEOUT_S
        lost: set[bytes] = set()
        killed_at, given_back = 0.0, None
        while True:
            job = session.get(status_url, timeout=30).json()
            if job["status"] not in ("queued", "running"):
                break
            chunks = job["chunks"]
            if kill_at is not None and chunks["done"] >= kill_at * max(chunks["total"], 1):
                print(f"  SIGKILL the worker at {chunks['done']}/{chunks['total']} chunks")
                held, killed_at = held_tags(service), time.monotonic()
                print(f"  a new worker had the model after {service.kill_worker():.1f} s")
                lost = held & set(service.client.hkeys(redis_keys.KOMBU_UNACKED))
                kill_at = None
            if lost and not lost & set(service.client.hkeys(redis_keys.KOMBU_UNACKED)):
                given_back, lost = time.monotonic() - killed_at, set()
                print(f"  the dead worker's messages were back on the queue after "
                      f"{given_back:.1f} s")  # fmt: skip
            if time.monotonic() > deadline:
                raise TimeoutError(job)
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
    time.sleep(2)  # the last marker and counters written
    after = int(service.client.info("memory")["used_memory"])
    sync_jobs = job_records(service) - records
    sync_bytes = sum(int(service.client.memory_usage(name) or 0) for name in sync_jobs)
    return Outcome(job, seconds, sampler, before, after, job_keys_bytes(service, job["id"]),
                   sync_bytes, given_back)  # fmt: skip


def report(figures: Figures, key: str, label: str, outcome: Outcome, raw: float) -> None:
    job = outcome.job
    chunks = job["chunks"]["done"]
    print(f"{label}: {job['status']}, {chunks} chunks of {job['documents']['done']} documents "
          f"in {outcome.seconds:.1f} s")  # fmt: skip
    rate = chunks / outcome.seconds
    figures.add(f"{key}_chunks_per_s", f"{label}: chunks/s", "chunks/s", rate)
    figures.add(f"{key}_ratio", f"{label}: chunks/s over raw", "x", rate / raw)
    peak = max(used for _, used, _, _ in outcome.sampler.memory) - outcome.redis_before
    figures.add(f"{key}_redis_peak", f"{label}: Redis used_memory peak growth", "MiB",
                peak / 2**20)  # fmt: skip
    grown = outcome.redis_after - outcome.redis_before
    figures.add(f"{key}_redis_per_chunk", f"{label}: Redis used_memory grown per chunk",
                "B", grown / max(chunks, 1))  # fmt: skip
    figures.add(f"{key}_sync_jobs", f"{label}: of which the sync calls' job records", "MiB",
                outcome.sync_jobs_bytes / 2**20)  # fmt: skip
    figures.add(f"{key}_job_keys_per_chunk", f"{label}: the job's keys per chunk", "B",
                outcome.job_keys_bytes / max(chunks, 1))  # fmt: skip
    figures.add(f"{key}_api_rss", f"{label}: API RSS peak", "MiB",
                max(api for _, _, api, _ in outcome.sampler.memory))  # fmt: skip
    figures.add(f"{key}_worker_rss", f"{label}: worker RSS peak", "MiB",
                max(worker for _, _, _, worker in outcome.sampler.memory))  # fmt: skip
    seconds = outcome.sampler.sync_seconds
    if seconds:
        figures.percentiles(f"{key}_sync", f"{label}: one-text sync call", seconds, None)
    print(f"  sync calls: {len(seconds)} answered, {outcome.sampler.sync_errors} failed")


def parquet_rows(directory: Path) -> tuple[int, int]:
    """(rows, distinct (id, chunk)) of a job's parquet directory."""
    table = ds.dataset(directory, format="parquet").to_table(columns=["id", "chunk"])
    pairs = set(zip(table["id"].to_pylist(), table["chunk"].to_pylist(), strict=True))
    return table.num_rows, len(pairs)


def wait_for_index(dsn: str, limit_s: float) -> float | None:
    """Seconds until the chunks table has an HNSW index (None: not within `limit_s`)."""
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() - started < limit_s:
            found = conn.execute("SELECT 1 FROM pg_indexes WHERE tablename = 'chunks' AND "
                                 "indexdef ILIKE '%%hnsw%%'").fetchone()  # fmt: skip
            valid = conn.execute("SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = "
                                 "'chunks'::regclass").fetchone()  # fmt: skip
            if found and valid and valid[0]:
                return time.monotonic() - started
            time.sleep(1)
    return None


def main() -> int:
    args = parse_args()
    install_signal_handlers()
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="embeddings-scale-") as tmp:
        work = Path(tmp)
        docs = work / "documents.ndjson"
        build_documents(args.corpus, args.docs, args.passages, docs)
        size = docs.stat().st_size / 2**20
        print(f"{args.docs} documents of {args.passages} passages ({size:.0f} MiB), "
              f"chunks of at most {args.max_tokens} tokens")  # fmt: skip
        raw = raw_rate(docs, args.raw_sample, args.max_tokens)
        figures.add("raw_chunks_per_s", "raw SentenceTransformer.encode, one list", "chunks/s",
                    raw)  # fmt: skip
        import pgserver

        pg = pgserver.get_server(work / "pg", cleanup_mode="stop")
        dsn = pg.get_uri()
        files = work / "vectors"
        sinks = work / "sinks.toml"
        sinks.write_text(f'[sinks.files]\nkind = "parquet"\npath = "{files}"\n'
                         f'[sinks.pg]\nkind = "pgvector"\ndsn_env = "{DSN_ENV}"\n'
                         'table = "chunks"\n')  # fmt: skip
        env = {**MANY_CLIENTS_ENV, "SINKS_FILE": str(sinks), DSN_ENV: dsn}
        try:
            with LocalService("scale", env=env) as service:
                clean = index(service, docs, "files", args.max_tokens)
                report(figures, "parquet", "parquet sink", clean, raw)
                killed = index(service, docs, "files", args.max_tokens, kill_at=0.5)
                report(figures, "killed", "parquet sink, worker SIGKILLed at 50%", killed, raw)
                extra = killed.seconds - clean.seconds
                figures.add("killed_extra_s", "killed run: time to done over the clean run",
                            "s", extra)  # fmt: skip
                if killed.given_back_s is not None:
                    figures.add("given_back_s", "killed run: its messages back on the queue",
                                "s", killed.given_back_s)  # fmt: skip
                rows, distinct = parquet_rows(files / killed.job["id"])
                exactly_once = rows == distinct == killed.job["chunks"]["total"]
                print(
                    f"  killed run: {rows} rows, {distinct} distinct, "
                    f"{killed.job['chunks']['total']} chunks: exactly once {exactly_once}"
                )
                pgrun = index(service, docs, "pg", args.max_tokens)
                report(figures, "pgvector", "pgvector sink", pgrun, raw)
                built = wait_for_index(dsn, args.index_wait)
                if built is not None:
                    figures.add("hnsw_s", "pgvector: HNSW index built after the job", "s", built)
                else:
                    print(f"  HNSW index not built within {args.index_wait} s")
        finally:
            pg.cleanup()
    results = [
        at_most("Redis used_memory grown per chunk, parquet",
                figures.mean("parquet_redis_per_chunk"), BAR_BYTES_PER_CHUNK, " B"),
        at_most("Redis used_memory grown per chunk, pgvector",
                figures.mean("pgvector_redis_per_chunk"), BAR_BYTES_PER_CHUNK, " B"),
        at_most("sync p95 during the parquet job", figures.mean("parquet_sync_p95"),
                BAR_SYNC_P95_MS, " ms"),
        at_most("a killed worker's messages back on the queue",
                figures.mean("given_back_s"), BAR_GIVEN_BACK_S, " s"),
        at_least("killed run exactly once", 1.0 if exactly_once else 0.0, 1.0, ""),
    ]  # fmt: skip
    data = {"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures.as_dict(),
            "memory": {"parquet": clean.sampler.memory, "killed": killed.sampler.memory,
                       "pgvector": pgrun.sampler.memory}}  # fmt: skip
    return finish("scale", data, results)


if __name__ == "__main__":
    run(main)
