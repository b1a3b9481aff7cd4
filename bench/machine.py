"""Processes on this machine: their resident memory, and the CPU that processes outside
the bench took while a figure ran.

The bench's processes are this one and its descendants (Redis, gunicorn, the worker).
Other work on the same cores (and steal by other VMs) slows raw and service figures alike;
the `others` figure makes it visible.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """Non-idle CPU ticks of the whole machine, all cores."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return sum(fields[:8]) - idle - iowait  # user to steal; guest time is counted in user


def rss_mib(pid: int) -> float:
    """VmRSS of a live process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def children_of(pid: int) -> list[int]:
    """Direct child pids, from /proc/<pid>/task/*/children."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return sorted(found)


def tree_rss_mib(pid: int) -> float:
    """VmRSS of a process and its direct children (a gunicorn master and its workers),
    summed, MiB; a child that has just exited counts 0."""
    size = 0.0
    for member in [pid, *children_of(pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            size += rss_mib(member)
    return size


def tree_ticks(root: int) -> int:
    """utime + stime of `root` and its live descendants."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            todo += children_of(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        total += int(fields[11]) + int(fields[12])
    return total


class OthersCpu:
    """Context manager: `percent` of all cores that other processes used inside it."""

    def __init__(self) -> None:
        self.percent = 0.0

    def _sample(self) -> tuple[float, int, int]:
        return time.monotonic(), _busy_ticks(), tree_ticks(os.getpid())

    def __enter__(self) -> OthersCpu:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        (t0, busy0, own0), (t1, busy1, own1) = self._start, self._sample()
        capacity = (t1 - t0) * TICKS_PER_S * (os.cpu_count() or 1)
        others = (busy1 - busy0) - (own1 - own0)
        # Tick accounting in a VM can overshoot over a short window: keep it within 0-100.
        self.percent = min(100.0, max(0.0, 100 * others / capacity)) if capacity else 0.0


def wait_quiet(percent: float = 10.0, timeout: float = 60.0) -> None:
    """Until other processes take under `percent` of the cores for a second (at most
    `timeout`): a service that has just started, or is ending a load, settles first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with OthersCpu() as others:
            time.sleep(1.0)
        if others.percent < percent:
            return
