"""Waiting, for the tests: until a condition holds, or a job is no longer active."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
ACTIVE = ("queued", "running")


def wait_until(
    read: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.1
) -> T:
    """Call `read` until `done` holds for what it returns; that value. Fails after
    `timeout` seconds, showing the last value."""
    deadline = time.monotonic() + timeout
    while not done(value := read()):
        assert time.monotonic() < deadline, value
        time.sleep(interval)
    return value


def wait_job(
    read: Callable[[], dict[str, Any]], timeout: float = 120, interval: float = 0.2
) -> dict[str, Any]:
    """A job's (or index job's) body, read by `read`, once it is no longer queued or
    running."""
    return wait_until(read, lambda body: body["status"] not in ACTIVE, timeout, interval)
