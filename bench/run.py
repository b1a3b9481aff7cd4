"""The benchmarks as one command: each suite in turn, then a summary of their bars.

    .venv/bin/python bench/run.py [SUITE ...] [--quick]

Suites (default: all, in this order):

  foundation  raw encode against sync/async requests, single-text latency, API RSS
  throughput  concurrent clients, one async job per backend, cache hits (wrk), batches
  indexing    index jobs over the corpus (torch, onnx), Redis bytes/vector, API RSS
  load        locust against `embeddings up`
  backends    torch against ONNX Runtime (fp32, int8) encoders in-process, and agreement
  pipeline    the service's own cost: the debug backend (no forward pass) and the real
              model under wrk, CPU per request of each process
  gpu         only when named, on a CUDA machine: the gpu-queue worker (float16, memory
              fraction, token-budget passes) against raw encode on the same GPU
  scale       only when named: 50,000 documents into a parquet and a pgvector sink, and
              a worker SIGKILLed halfway (Redis and RSS over time, sync calls meanwhile)

Each suite runs as its own process (`python bench/<suite>.py`, its output passed
through; load must, as locust patches the standard library with gevent) and writes its
figures and bars to bench/results/<suite>-<timestamp>.json. --quick passes small sizes to
every suite, for a smoke run (its bars mean little). Exits 1 when a suite fails (a bar
failed, or it did not finish).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from report import RESULTS_FILE_ENV, Bar, bar_line, shown_path
from suite import RESULTS_DIR, ROOT

SUITES = ("foundation", "throughput", "indexing", "load", "backends", "pipeline")
ON_REQUEST = ("gpu", "scale")
"""Suites run only when named: gpu needs CUDA; scale takes about half an hour here."""
QUICK = {
    "foundation": ["--limit", "200", "--single", "40"],
    "throughput": ["--limit", "256", "--singles", "64", "--wrk-seconds", "2"],
    "indexing": ["--limit", "300"],
    "load": ["--seconds", "10", "--warmup", "5", "--users", "8"],
    "backends": ["--limit", "200", "--single", "20", "--agreement", "100"],
    "pipeline": [
        "--seconds",
        "2",
        "--index-docs",
        "1000",
        "--real-index-docs",
        "200",
        "--raw-singles",
        "50",
    ],
    "gpu": ["--limit", "256", "--singles", "64"],
    "scale": ["--docs", "3000", "--raw-sample", "500", "--index-wait", "60"],
}


@dataclass(frozen=True)
class Outcome:
    suite: str
    code: int
    results: Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"of {', '.join((*SUITES, *ON_REQUEST))} (default: all but {', '.join(ON_REQUEST)})",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    known = (*SUITES, *ON_REQUEST)
    if unknown := [name for name in args.suites if name not in known]:
        parser.error(f"unknown suite {', '.join(unknown)}: choose from {', '.join(known)}")
    args.suites = [name for name in known if name in args.suites] if args.suites else SUITES
    return args


def run_suite(suite: str, quick: bool, stamp: str) -> Outcome:
    """The suite in a child process; SIGTERM and SIGHUP are passed on to it."""
    results = RESULTS_DIR / f"{suite}-{stamp}.json"
    results.unlink(missing_ok=True)
    script = Path("bench") / f"{suite}.py"  # from ROOT, its working directory
    command = [sys.executable, str(script), *(QUICK[suite] if quick else [])]
    print(f"\n=== {suite}: {' '.join(command[1:])}", flush=True)
    env = os.environ | {RESULTS_FILE_ENV: str(results)}
    with subprocess.Popen(command, cwd=ROOT, env=env) as child:

        def forward(number: int, _: object) -> None:
            child.send_signal(number)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            code = child.wait()
        except KeyboardInterrupt:  # the child got the Ctrl-C too: let it stop its service
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return Outcome(suite, code, results)


def read_bars(path: Path) -> list[Bar] | None:
    """The bars of a suite's JSON file; None when there is none."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return [Bar(**bar) for bar in data.get("bars", [])]


def summary(outcomes: list[Outcome]) -> list[str]:
    lines = ["", "=== summary"]
    for outcome in outcomes:
        status = "ok" if outcome.code == 0 else f"FAILED (exit {outcome.code})"
        found = read_bars(outcome.results)
        where = shown_path(outcome.results) if found is not None else "no results file"
        lines.append(f"{outcome.suite}: {status}, {where}")
        lines += [bar_line(bar) for bar in found or []]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    outcomes = []
    for suite in args.suites:
        outcomes.append(run_suite(suite, args.quick, stamp))
        if outcomes[-1].code == 130:  # interrupted: no further suite
            break
    print("\n".join(summary(outcomes)))
    return 1 if any(outcome.code for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
