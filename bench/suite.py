"""What every suite shares: the paths, argument checks, signals and the entry point.

bench/ is on sys.path when a suite runs (`python bench/<suite>.py`), so the modules here
import each other by name; no suite imports another suite.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "passages.jsonl"
RESULTS_DIR = ROOT / "bench" / "results"


def positive(value: str) -> int:
    """argparse type: an integer of at least 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def check_repeat(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--repeat of at least 2, so every figure shows a spread."""
    if args.repeat < 2:
        parser.error("--repeat must be at least 2, to show a spread")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: the service is stopped on the way."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _: sys.exit(128 + number))


def run(main: Callable[[], int]) -> NoReturn:
    """A suite's `if __name__ == "__main__"`: exit with main()'s status, 130 on Ctrl-C."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
