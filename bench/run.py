"""Benchmark: the model encoding in-process ("raw") against the same texts through the service.

    .venv/bin/python bench/run.py [--limit 2000] [--repeat 2]
                                  [--url URL [--api-pid PID] [--api-key KEY]]

Measures raw first, then starts Redis, the API (gunicorn) and one CPU worker on free ports
(unless --url names a running service) and measures sync, async and single-text requests
and the API's memory. Raw, service and client share this machine's cores; the CPU that
other processes took meanwhile is shown next to each figure. Prints the figures side by
side with the bars, writes them to bench/results/<timestamp>.json and exits 1 when a bar
fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import http_load
import raw_encode
from http_load import Target
from local_stack import LocalService, wait_healthy
from machine import children_of, rss_mib
from report import Figures, bar_lines, bars, table, write_json
from workload import CHUNK, Workload, load_texts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "passages.jsonl"
RESULTS_DIR = ROOT / "bench" / "results"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSONL: id, text")
    parser.add_argument("--limit", type=_positive, default=2000, help="texts to use")
    parser.add_argument("--single", type=_positive, default=200, help="one-text calls per run")
    parser.add_argument("--repeat", type=_positive, default=2, help="runs of each figure")
    parser.add_argument("--url", help="benchmark this running service instead of starting one")
    parser.add_argument("--api-pid", type=int, help="with --url: gunicorn master pid, for RSS")
    parser.add_argument(
        "--api-key", default=os.environ.get("EMBEDDINGS_API_KEY"),
        help="with --url: key to send (default: $EMBEDDINGS_API_KEY)",
    )  # fmt: skip
    return parser.parse_args(argv)


def record_rss(figures: Figures, api_pid: int, worker_pid: int | None) -> None:
    """VmRSS of the gunicorn master, each gunicorn worker and (if known) the Celery worker."""
    figures.add("rss_master", f"gunicorn master (pid {api_pid})", "MiB", rss_mib(api_pid))
    sizes = {pid: rss_mib(pid) for pid in children_of(api_pid)}
    for pid, size in sizes.items():
        figures.add(f"rss_gunicorn_{pid}", f"gunicorn worker (pid {pid})", "MiB", size)
    if sizes:
        figures.add("rss_api", "API RSS (largest gunicorn worker)", "MiB", max(sizes.values()))
    if worker_pid:
        label = f"celery worker (pid {worker_pid}), not API"
        figures.add("rss_celery", label, "MiB", rss_mib(worker_pid))


def measure_service(
    target: Target,
    work: Workload,
    reference: np.ndarray,
    figures: Figures,
    pids: tuple[int, int | None] | None,
) -> float:
    """Warm up, check the vectors, then each service figure (and RSS, when the pids are
    known) `work.repeat` times; returns the lowest cosine between service and raw vectors."""
    http_load.warm_up(target, work.texts)
    agreement = http_load.min_cosine(target, work.texts[:CHUNK], reference)
    print(f"service vs raw vectors, first {CHUNK} texts: lowest cosine {agreement:.6f}")
    for run in range(1, work.repeat + 1):
        print(f"service, repeat {run}/{work.repeat}", flush=True)
        http_load.measure_round(target, work, figures)
        if pids:
            record_rss(figures, *pids)
    return agreement


def run_service(
    args: argparse.Namespace, work: Workload, reference: np.ndarray, figures: Figures
) -> float:
    """Measure the service at --url, or one started here (stopped however this ends)."""
    if args.url:
        target = Target(args.url.rstrip("/"), args.api_key)
        wait_healthy(target.url)
        pids = (args.api_pid, None) if args.api_pid else None
        return measure_service(target, work, reference, figures, pids)
    with LocalService() as service:
        print(f"service at {service.url}, redis at {service.redis.url}, logs in {service.dir}")
        return measure_service(Target(service.url), work, reference, figures, service.pids)


def header(args: argparse.Namespace, texts: list[str]) -> dict[str, object]:
    """Print what is measured where; return it for the JSON file."""
    config: dict[str, object] = {
        "corpus": str(args.corpus),
        "texts": len(texts),
        "single_texts": min(args.single, len(texts)),
        "repeat": args.repeat,
        "service": args.url or "started by the bench",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    print(
        f"{len(texts)} texts from {args.corpus}, {args.repeat} repeats; "
        f"{os.cpu_count()} cores shared by the raw model, the API, the worker and this client; "
        f"torch threads (raw) {torch.get_num_threads()}. Raw first, then the service "
        "(the raw model released by then).",
        flush=True,
    )
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the service is stopped
    texts = load_texts(args.corpus, args.limit)
    work = Workload(texts, texts[: args.single], args.repeat)
    config = header(args, texts) | {"started": datetime.now().isoformat(timespec="seconds")}
    figures = Figures()
    reference = raw_encode.measure(work, figures)
    config["min_cosine_service_vs_raw"] = run_service(args, work, reference, figures)
    results = bars(figures)
    agreement = f"service vs raw vectors: lowest cosine {config['min_cosine_service_vs_raw']:.6f}"
    print("\n" + "\n".join([*table(figures), "", agreement, "", *bar_lines(results)]))
    path = RESULTS_DIR / f"{datetime.now():%Y%m%d-%H%M%S}.json"
    write_json(path, config, figures, results)
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 1 if any(bar.passed is False for bar in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
