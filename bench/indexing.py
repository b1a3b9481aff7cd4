"""Indexing: a corpus through POST /api/v1/index-jobs, torch and onnx workers, against raw.

    .venv/bin/python bench/indexing.py [--limit 4972] [--repeat 2]

Raw first, in this process: the chunks that common.chunking.split makes of every passage
(the model's tokenizer.json, `--max-tokens` 128, overlap 0), encoded as one list
(SentenceTransformer, batch_size 32): documents/s and chunks/s. The raw model is released
before the service starts.

Then Redis, the API (gunicorn, WEB_CONCURRENCY=2) and one CPU worker (bench/local_stack.py,
as for bench/throughput.py) and, per backend (torch, then onnx after a worker restart; the
first onnx start exports the model, outside any timing), after a small warm-up job,
`--repeat` times: the passages as documents ({"id", "text"}) in one NDJSON upload
(Cache-Control: no-store, so no run is served from, or fills, the embedding cache), timed
from the POST to the job seen succeeded (polled every 50 ms). Beside it: the upload's own
seconds; the peak RSS of the API (gunicorn master + workers, sampled every 50 ms) during
the upload; Redis bytes per stored vector (used_memory delta, and MEMORY USAGE of the job's
vectors + plan hashes, over chunks); the batches the worker formed. Once per backend, the
job's results (.npz) are checked against the raw chunks (same offsets) and vectors (lowest
cosine).

Writes bench/results/indexing-<timestamp>.json; exits 1 when a bar fails.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import requests

import raw_encode
from batches import BatchLog
from common.chunking import split
from http_load import check, wait_succeeded
from local_stack import MANY_CLIENTS_ENV, WORKER, LocalService, model_spec
from machine import OthersCpu, tree_rss_mib
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
from workload import CHUNK

BACKENDS = ("torch", "onnx")
POLL_S = 0.05
RSS_EVERY_S = 0.05
JOB_TIMEOUT_S = 3600.0
DRAIN_TIMEOUT_S = 10.0
CELERY_QUEUE = "cpu"
KOMBU_UNACKED = "unacked"  # kombu's Redis transport: messages delivered, not yet acked

BAR_RATIO = {"torch": 0.9, "onnx": 1.2}
BAR_BYTES_PER_VECTOR = 1700.0  # 1.7 KB


@dataclass(frozen=True)
class Piece:
    doc: str
    index: int
    start: int
    end: int
    text: str


def load_docs(path: Path, limit: int) -> list[dict[str, str]]:
    """{"id", "text"} of the first `limit` lines of a JSONL file."""
    docs = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            if len(docs) == limit:
                break
            if line.strip():
                row = json.loads(line)
                docs.append({"id": str(row.get("id", f"line-{number}")), "text": row["text"]})
    return docs


def chunk_docs(docs: list[dict[str, str]], max_tokens: int, overlap: int) -> list[Piece]:
    """The chunks the API makes (common.chunking.split with the model's tokenizer.json)."""
    tokenizer = model_spec().tokenizer_file()
    return [
        Piece(doc["id"], c.index, c.start, c.end, doc["text"][c.start : c.end])
        for doc in docs
        for c in split(tokenizer, doc["text"], max_tokens, overlap)
    ]


def measure_raw(docs: int, pieces: list[Piece], repeat: int, figures: Figures) -> np.ndarray:
    """Raw encode of all chunks as one list, `repeat` times; returns the vectors, unit length."""
    texts = [piece.text for piece in pieces]
    model = raw_encode.load_model()
    model.encode(texts[: 2 * CHUNK], batch_size=CHUNK)
    vectors = np.empty(0)
    for number in range(1, repeat + 1):
        print(f"raw, repeat {number}/{repeat}", flush=True)
        with OthersCpu() as others:
            rate, vectors = raw_encode.encode_whole(model, texts)
        per_doc = docs / len(texts)
        figures.add("raw_docs", "raw, one list", "docs/s", rate * per_doc, others.percent)
        label = "raw, one list, batch 32"
        figures.add("raw_chunks", label, "chunks/s", rate, others.percent)
    return raw_encode.normalized(vectors)


class RssSampler:
    """VmRSS of the gunicorn master and its workers, summed, every 50 ms in a thread."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss")

    def total(self) -> float:
        return tree_rss_mib(self.master)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.total()))
            self._stop.wait(RSS_EVERY_S)

    def __enter__(self) -> RssSampler:
        self.samples.append((time.perf_counter(), self.total()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, until: float) -> float:
        return max(size for at, size in self.samples if at <= until)


def upload_body(docs: list[dict[str, str]]) -> bytes:
    return b"".join(orjson.dumps(doc) + b"\n" for doc in docs)


def submit(session: requests.Session, url: str, body: bytes, max_tokens: int) -> str:
    answer = session.post(
        f"{url}/api/v1/index-jobs",
        params={"max_tokens": max_tokens, "overlap_tokens": 0},
        data=body,
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"},
        timeout=JOB_TIMEOUT_S,
    )
    return str(orjson.loads(check(answer).content)["id"])


def wait_job(session: requests.Session, url: str, job_id: str) -> dict[str, Any]:
    status_url = f"{url}/api/v1/index-jobs/{job_id}"
    return wait_succeeded(session, status_url, JOB_TIMEOUT_S, (POLL_S, POLL_S))


def drained(stack: LocalService) -> None:
    """Until the last task messages are acked (a job succeeds just before its last ack)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    client = stack.client
    while time.monotonic() < deadline:
        if not client.llen(CELERY_QUEUE) and not client.hlen(KOMBU_UNACKED):
            return
        time.sleep(0.05)


def index_once(
    stack: LocalService, body: bytes, max_tokens: int, backend: str, figures: Figures
) -> dict[str, Any]:
    """One timed index job; figures for it; returns the finished job's progress body."""
    client = stack.client
    used_before = int(client.info("memory")["used_memory"])
    with requests.Session() as session, RssSampler(stack.api_pid) as rss, OthersCpu() as others:
        started = time.perf_counter()
        job_id = submit(session, stack.url, body, max_tokens)
        uploaded = time.perf_counter()
        job = wait_job(session, stack.url, job_id)
        elapsed = time.perf_counter() - started
    drained(stack)
    used_after = int(client.info("memory")["used_memory"])
    chunks, docs = job["chunks"], job["documents"]
    if chunks["failed"] or docs["failed"]:
        raise RuntimeError(f"index job {job_id}: failures {job['failures']}")
    count = chunks["done"]
    label = f"index job, {backend}"
    cpu = others.percent
    figures.add(f"{backend}_docs", label, "docs/s", docs["done"] / elapsed, cpu)
    figures.add(f"{backend}_chunks", label, "chunks/s", count / elapsed, cpu)
    figures.add(f"{backend}_upload", f"{label}, upload (POST) alone", "s", uploaded - started, cpu)
    figures.add("rss_before", "API RSS before the upload", "MiB", rss.samples[0][1])
    figures.add("rss_peak", "API RSS, peak during the upload", "MiB", rss.peak(uploaded))
    hashes = [f"emb:ix:{job_id}:{part}" for part in ("vectors", "plan")]
    usage = sum(int(client.memory_usage(key, samples=0) or 0) for key in hashes)
    figures.add("bytes_used_memory", "Redis used_memory delta / chunk", "B",
                (used_after - used_before) / count)  # fmt: skip
    figures.add("bytes_memory_usage", "MEMORY USAGE vectors+plan / chunk", "B", usage / count)
    return job


def check_results(
    stack: LocalService, job_id: str, pieces: list[Piece], reference: np.ndarray
) -> dict[str, Any]:
    """The job's .npz against the raw chunks: same (id, chunk, start, end), and cosines."""
    answer = requests.get(
        f"{stack.url}/api/v1/index-jobs/{job_id}/results", params={"format": "npz"}, timeout=300
    )
    found = np.load(io.BytesIO(check(answer).content))
    rows = list(zip(found["ids"].tolist(), found["chunks"].tolist(), found["starts"].tolist(),
                    found["ends"].tolist(), strict=True))  # fmt: skip
    expected = [(p.doc, p.index, p.start, p.end) for p in pieces]
    same = rows == expected
    out: dict[str, Any] = {"job": job_id, "chunks": len(rows), "offsets_match": same}
    if same:
        out["min_cosine_vs_raw_torch"] = raw_encode.min_cosine(found["embeddings"], reference)
    return out


@dataclass
class Measured:
    """What the service runs fill in."""

    figures: Figures
    batches: BatchLog
    notes: dict[str, Any]


def switch_backend(stack: LocalService, backend: str, notes: dict[str, Any]) -> None:
    """Restart the worker with `backend`, unless it runs that one already."""
    if backend == stack.backend:
        return
    print(f"restarting the worker with backend {backend} (first onnx use exports)")
    took = stack.restart_worker(backend)
    notes[f"{backend}_worker_start_seconds"] = took
    print(f"{backend} worker ready in {took:.1f} s", flush=True)


def backend_rounds(
    args: argparse.Namespace,
    stack: LocalService,
    backend: str,
    docs: list[dict[str, str]],
    pieces: list[Piece],
    reference: np.ndarray,
    out: Measured,
) -> None:
    """A warm-up job, then `--repeat` timed ones; the first one's results are checked."""
    print(f"warm-up ({backend} worker)", flush=True)
    with requests.Session() as session:
        warm = upload_body(docs[:64])
        wait_job(session, stack.url, submit(session, stack.url, warm, args.max_tokens))
    body = upload_body(docs)
    for number in range(1, args.repeat + 1):
        print(f"service ({backend} worker), repeat {number}/{args.repeat}", flush=True)
        job = out.batches.run(
            stack,
            f"index job, {backend}",
            lambda: index_once(stack, body, args.max_tokens, backend, out.figures),
        )
        if number == 1:
            found = check_results(stack, job["id"], pieces, reference)
            out.notes[f"results_{backend}"] = found
            print(f"    results: {results_line(found, len(pieces))}", flush=True)


def run_service(
    args: argparse.Namespace,
    docs: list[dict[str, str]],
    pieces: list[Piece],
    reference: np.ndarray,
    out: Measured,
) -> None:
    with LocalService("indexing", backend="torch", env=MANY_CLIENTS_ENV) as stack:
        print(stack.describe())
        for backend in args.backends:
            switch_backend(stack, backend, out.notes)
            backend_rounds(args, stack, backend, docs, pieces, reference, out)


def results_line(found: dict[str, Any], expected: int) -> str:
    if not found["offsets_match"]:
        return (
            f"{found['chunks']} chunks; their (id, chunk, start, end) DIFFER from "
            f"common.chunking.split's {expected}"
        )
    return (
        f"{found['chunks']} chunks, offsets as common.chunking.split's; lowest cosine vs "
        f"raw torch {found['min_cosine_vs_raw_torch']:.6f}"
    )


def rows(backends: tuple[str, ...]) -> list[Row]:
    out: list[Row] = []
    for backend in backends:
        out += [Row(f"{backend}_chunks", "raw_chunks"), Row(f"{backend}_docs", "raw_docs"),
                Row(f"{backend}_upload")]  # fmt: skip
    keys = ("rss_before", "rss_peak", "bytes_used_memory", "bytes_memory_usage")
    return out + [Row(key) for key in keys]


def bars(figures: Figures, backends: tuple[str, ...]) -> list[Bar]:
    out = [
        at_least(
            f"index job, {b}, chunks/s >= {BAR_RATIO[b]:g}x raw one list",
            ratio(figures, f"{b}_chunks", "raw_chunks"),
            BAR_RATIO[b],
            "x",
        )
        for b in backends
    ]
    for key in ("bytes_used_memory", "bytes_memory_usage"):
        name = f"{figures[key].label} <= {BAR_BYTES_PER_VECTOR:g} B" if key in figures else key
        out.append(at_most(name, figures.mean(key), BAR_BYTES_PER_VECTOR, " B"))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSONL with id and text fields")
    add("--limit", type=positive, default=10**9, help="documents (default: all)")
    add("--max-tokens", type=positive, default=128, help="chunk size in tokens")
    add("--repeat", type=positive, default=2, help="runs of each figure, at least 2")
    add("--backends", default=",".join(BACKENDS), help="comma-separated, of torch and onnx")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    args.backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not args.backends or set(args.backends) - set(BACKENDS):
        parser.error(f"--backends: some of {', '.join(BACKENDS)}")
    return args


def header(args: argparse.Namespace, docs: int, pieces: int) -> dict[str, object]:
    """Print what is measured where; return it for the JSON file."""
    print(
        f"{docs} documents from {args.corpus} -> {pieces} chunks of at most "
        f"{args.max_tokens} tokens; {args.repeat} repeats; {os.cpu_count()} cores shared by "
        f"the raw model, the API, the worker and this client; load average "
        f"{os.getloadavg()[0]:.1f}. Raw first.",
        flush=True,
    )
    return {
        "started": datetime.now().isoformat(timespec="seconds"),
        "corpus": str(args.corpus), "documents": docs, "chunks": pieces,
        "chunking": {"max_tokens": args.max_tokens, "overlap_tokens": 0},
        "repeat": args.repeat, "backends": args.backends, "service_env": MANY_CLIENTS_ENV,
        "worker": WORKER, "cpu_cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }  # fmt: skip


def report_lines(args: argparse.Namespace, out: Measured, pieces: int) -> list[str]:
    """The table, the job results against raw and the worker's batches."""
    lines = ["", *table(out.figures, rows(args.backends)), "", *others_note(), ""]
    lines.append("job results against the raw chunks and vectors")
    for backend in args.backends:
        if (found := out.notes.get(f"results_{backend}")) is not None:
            lines.append(f"  {backend:<5} {results_line(found, pieces)}")
    return [*lines, "", *out.batches.lines()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    docs = load_docs(args.corpus, args.limit)
    pieces = chunk_docs(docs, args.max_tokens, 0)
    config = header(args, len(docs), len(pieces))
    out = Measured(Figures(), BatchLog(), {})
    reference = measure_raw(len(docs), pieces, args.repeat, out.figures)
    gc.collect()
    run_service(args, docs, pieces, reference, out)
    print("\n".join(report_lines(args, out, len(pieces))))
    data = {"config": config, "figures": out.figures.as_dict(),
            "comparisons": comparisons(out.figures, rows(args.backends)),
            "batches": out.batches.as_dict(), "notes": out.notes}  # fmt: skip
    return finish("indexing", data, bars(out.figures, args.backends))


if __name__ == "__main__":
    run(main)
