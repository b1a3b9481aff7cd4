"""Exclusive locks that a crash cannot leave stale: flock(2) on a file held open.

The kernel drops the lock when the last descriptor of the open file is closed, so when
its holder (and any child it was passed to) exits, however it exits. The file keeps the
holder's pid, for messages only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Held(RuntimeError):
    """The lock is taken; `pid` is its holder's, when it wrote one."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is locked by pid {pid if pid else '?'}")
        self.path = path
        self.pid = pid


def hold(path: Path) -> int:
    """Take the lock on `path` without waiting: the descriptor that holds it, which the
    caller keeps open (or passes to a child, with pass_fds) for as long as it needs it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = holder(fd)
        os.close(fd)
        raise Held(path, pid) from None
    write_pid(fd, os.getpid())
    return fd


def write_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
