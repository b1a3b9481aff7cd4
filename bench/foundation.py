"""Foundation: the model encoding in-process ("raw") against the same texts through the service.

    .venv/bin/python bench/foundation.py [--limit 2000] [--single 200] [--repeat 2]
                                         [--url URL [--api-pid PID] [--api-key KEY]]

Measures raw first, then starts Redis, the API (gunicorn) and one CPU worker on free ports
(unless --url names a running service) and measures sync, async and single-text requests
and the API's memory. Raw, service and client share this machine's cores; the CPU that
other processes took meanwhile is shown next to each figure. Prints the figures side by
side with the bars, writes them to bench/results/foundation-<timestamp>.json and exits 1
when a bar fails.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import http_load
import raw_encode
from http_load import Target
from local_stack import LocalService, wait_healthy
from machine import children_of, rss_mib
from report import (
    Bar,
    Figures,
    Row,
    at_least,
    at_most,
    compare,
    comparisons,
    finish,
    others_note,
    table,
)
from suite import DEFAULT_CORPUS, install_signal_handlers, positive, run
from workload import CHUNK, Workload, load_texts

BAR_THROUGHPUT_RATIO = 0.85
BAR_SINGLE_EXTRA_MS = 15.0
BAR_API_RSS_MIB = 150.0

ROWS = (
    Row("sync_1", "raw_chunks"),
    Row("async_1", "raw_chunks"),
    Row("sync_4", "raw_chunks"),
    Row("sync_4", "raw_whole"),
    Row("sync_p50", "raw_p50", "diff"),
    Row("sync_p95", "raw_p95", "diff"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSONL: id, text")
    parser.add_argument("--limit", type=positive, default=2000, help="texts to use")
    parser.add_argument("--single", type=positive, default=200, help="one-text calls per run")
    parser.add_argument("--repeat", type=positive, default=2, help="runs of each figure")
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
    for run_number in range(1, work.repeat + 1):
        print(f"service, repeat {run_number}/{work.repeat}", flush=True)
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
    with LocalService("foundation") as service:
        print(service.describe())
        return measure_service(Target(service.url), work, reference, figures, service.pids)


def header(args: argparse.Namespace, texts: list[str]) -> dict[str, object]:
    """Print what is measured where; return it for the JSON file."""
    config: dict[str, object] = {
        "started": datetime.now().isoformat(timespec="seconds"),
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


def bars(figures: Figures) -> list[Bar]:
    """The acceptance bars, judged on the means."""
    out = [
        at_least(
            f"{figures[key].label} >= {BAR_THROUGHPUT_RATIO}x raw chunks of 32",
            compare(figures, Row(key, "raw_chunks")),
            BAR_THROUGHPUT_RATIO,
            "x",
        )
        for key in ("sync_1", "async_1")
    ]
    out.append(
        at_most(
            f"single-text p50 <= raw p50 + {BAR_SINGLE_EXTRA_MS:g} ms",
            compare(figures, Row("sync_p50", "raw_p50", "diff")),
            BAR_SINGLE_EXTRA_MS,
            " ms",
        )
    )
    out.append(
        at_most(
            f"API RSS (largest gunicorn worker) <= {BAR_API_RSS_MIB:g} MiB",
            figures.mean("rss_api"),
            BAR_API_RSS_MIB,
            " MiB",
        )
    )
    return out


def memory_lines(figures: Figures) -> list[str]:
    memory = [key for key in figures if key.startswith("rss_")]
    if not memory:
        return []
    lines = ["", "memory (VmRSS at the end of each service repeat)"]
    return lines + [f"  {figures[key].label.ljust(36)} {figures[key].cell()}" for key in memory]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()  # so the service is stopped
    texts = load_texts(args.corpus, args.limit)
    work = Workload(texts, texts[: args.single], args.repeat)
    config = header(args, texts)
    figures = Figures()
    reference = raw_encode.measure(work, figures)
    agreement = run_service(args, work, reference, figures)
    config["min_cosine_service_vs_raw"] = agreement
    note = others_note("; with --url the service itself counts as others")
    agreement_line = f"service vs raw vectors: lowest cosine {agreement:.6f}"
    print("\n" + "\n".join([*table(figures, ROWS), *memory_lines(figures), "", *note]))
    print("\n" + agreement_line)
    data = {"config": config, "figures": figures.as_dict(),
            "comparisons": comparisons(figures, ROWS)}  # fmt: skip
    return finish("foundation", data, bars(figures))


if __name__ == "__main__":
    run(main)
