"""Prometheus multiprocess mode under gunicorn (used by api/gunicorn_conf.py).

Each gunicorn worker process keeps its metric values in files under
PROMETHEUS_MULTIPROC_DIR, and /metrics sums them (api/metrics.py), so a scrape that
lands on any worker sees the whole server. prometheus_client reads the variable when it
is first imported: the gunicorn config sets it before anything imports it. This module
imports prometheus_client only inside functions for that reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
CREATED_MARK = "EMBEDDINGS_METRICS_DIR_CREATED"
"""Set (to the path) when this module made the directory, so on_exit removes only ours."""


def ensure_dir() -> Path:
    """The metrics directory: PROMETHEUS_MULTIPROC_DIR if set, else a fresh temporary one.

    Called at config load (also on a reload, when it finds the directory already set).
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="embeddings-metrics-"))
    os.environ[ENV] = str(path)
    os.environ[CREATED_MARK] = str(path)
    return path


def wipe(path: Path) -> None:
    """Drop the values of an earlier server that used the same directory (master start)."""
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def mark_dead(pid: int) -> None:
    """A worker process exited: its live gauges stop counting (counters are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def remove_if_created(path: Path) -> None:
    if os.environ.get(CREATED_MARK) == str(path):
        shutil.rmtree(path, ignore_errors=True)
