"""The stack's processes, for the launcher, the bench and the tests: started in sessions of
their own that end with their parent, awaited until ready, stopped."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import requests

from cli.supervisor import how

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None  # looked up before fork
TAIL_CHARS = 3000
"""How much of a process's output a NotReady shows."""

Probe = str | Callable[[], bool]
"""A URL that answers 2xx when ready, or a check that returns True (and never raises)."""


class NotReady(RuntimeError):
    """A process exited, or the time passed, before the probe said ready."""


def _detach() -> None:
    """In the child, before exec: a session of its own, so a terminal's Ctrl-C reaches only
    the parent, which stops its children in order; and SIGTERM if the parent dies first
    (Linux), so a killed launcher leaves nothing running."""
    os.setsid()
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    args: Sequence[str],
    log: Path | None = None,
    preexec: Callable[[], object] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Popen in a session of its own that ends with its parent; `log`: a file that takes
    its stdout and stderr; `preexec`: more to do in the child before exec."""

    def setup() -> None:
        _detach()
        if preexec is not None:
            preexec()

    if log is None:
        return subprocess.Popen(args, preexec_fn=setup, **popen)
    with log.open("wb") as out:
        return subprocess.Popen(
            args, preexec_fn=setup, stdout=out, stderr=subprocess.STDOUT, **popen
        )


def answers(url: str) -> bool:
    """Whether GET `url` answers 2xx."""
    try:
        return 200 <= requests.get(url, timeout=5).status_code < 300
    except requests.RequestException:
        return False


def _said(process: subprocess.Popen[bytes] | None, log: Path | None) -> str:
    """The end of `log`, else of an exited `process`'s piped output (a running one's read
    would block)."""
    if log is not None:
        return log.read_text(errors="replace")[-TAIL_CHARS:]
    if process is None or process.poll() is None:
        return ""
    pipe = process.stderr or process.stdout
    return pipe.read().decode(errors="replace")[-TAIL_CHARS:] if pipe else ""


def _not_ready(
    what: str, reason: str, process: subprocess.Popen[bytes] | None, log: Path | None
) -> NotReady:
    said = _said(process, log)
    return NotReady(f"{what}: {reason}" + (f"\n{said}" if said else ""))


def await_ready(
    probe: Probe,
    timeout: float,
    processes: Collection[subprocess.Popen[bytes]] = (),
    what: str = "the service",
    log: Path | None = None,
    interval: float = 0.2,
) -> None:
    """Until `probe` says ready. NotReady, with the tail of `log` (or of the exited
    process's pipe), as soon as one of `processes` exits, or once `timeout` s pass."""
    ready = partial(answers, probe) if isinstance(probe, str) else probe
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if (code := process.poll()) is not None:
                reason = f"pid {process.pid} {how(code)} before it was ready"
                raise _not_ready(what, reason, process, log)
        if ready():
            return
        if time.monotonic() > deadline:
            raise _not_ready(what, f"not ready within {timeout:g} s", None, log)
        time.sleep(interval)


def start(
    args: Sequence[str],
    probe: Probe,
    timeout: float,
    what: str,
    log: Path | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """spawn, then await_ready; stopped again if it does not get ready."""
    process = spawn(args, log, **popen)
    try:
        await_ready(probe, timeout, [process], what, log)
    except BaseException:
        stop(process)
        raise
    return process


def stop(
    *processes: subprocess.Popen[bytes] | None, grace: float = 30.0, sig: int = signal.SIGTERM
) -> list[subprocess.Popen[bytes]]:
    """`sig` to each running process, then wait for each; SIGKILL what outlives `grace`
    seconds. The processes killed."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.send_signal(sig)
    killed = []
    for process in running:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed.append(process)
    return killed
