"""What `embeddings up` does once ready: it starts again whichever of its processes dies
(a worker, Flower, the API's gunicorn master, the embedded Redis), after a delay that
doubles while the process keeps dying young, and says so in one line each time."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
STEADY_SECONDS = 60.0
"""A process that ran this long before it died is started again after the first delay."""


def how(returncode: int) -> str:
    """How a process ended: `killed by SIGKILL`, `exited with 1`."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


@dataclass
class Child:
    """One supervised process: its exit status (None while it runs), and how to start it."""

    name: str
    returncode: Callable[[], int | None]
    start: Callable[[], object]
    started: float = field(default_factory=time.monotonic)
    delay: float = 0.0
    due: float | None = None
    """When it is to be started again, once it has died."""


class Supervisor:
    def __init__(self, children: list[Child]) -> None:
        self.children = children

    def check(self) -> None:
        """Note deaths, and start again those whose delay has passed."""
        now = time.monotonic()
        for child in self.children:
            if child.due is None:
                code = child.returncode()
                if code is None:
                    continue
                young = child.delay and now - child.started < STEADY_SECONDS
                first = FIRST_DELAY_SECONDS
                child.delay = min(child.delay * 2, MAX_DELAY_SECONDS) if young else first
                child.due = now + child.delay
                print(f"{child.name} {how(code)}; starting it again in {child.delay:.0f} s",
                      flush=True)  # fmt: skip
            elif now >= child.due:
                child.due, child.started = None, now
                try:
                    child.start()
                except Exception as error:  # noted as dead again at the next check
                    print(f"{child.name} did not start: {error}", flush=True)
