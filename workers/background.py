"""A worker's background loops: its heartbeat, the ledger sweep and the redelivery sweep.

Each loop survives Redis going away for a while: it logs and tries again next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common import ledger, presence
from workers import bulk_lane, redelivery
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def end_lost(rt: WorkerRuntime, work: ledger.Note) -> None:
    """The work of a message lost before its task started ends failed, with the reason."""
    reason = f"{ledger.LOST_REASON}: {ledger.LOST_MESSAGE}"
    log.warning("%s %s%s: its message was lost; failed", work.kind, work.job_id,
                "" if work.batch is None else f" batch {work.batch}")  # fmt: skip
    if work.kind == "embed":
        rt.jobs.fail(work.job_id, ledger.LOST_REASON, ledger.LOST_MESSAGE)
    elif work.batch is not None:
        rt.index_jobs.fail_batch(work.job_id, work.batch, reason)


def heartbeat(rt: WorkerRuntime) -> None:
    """Say this worker is alive, and which messages it holds (workers/redelivery.py)."""
    presence.beat(rt.redis, rt.info())
    held = [*redelivery.held_tags(), *bulk_lane.held_tags()]
    redelivery.publish(rt.redis, rt.name, held, time.time())


def sweep_ledger(rt: WorkerRuntime) -> None:
    """Sweep the ledger (common/ledger.py), one worker at a time."""
    visibility = rt.settings.BROKER_VISIBILITY_TIMEOUT_SECONDS
    with ledger.turn(rt.redis, ledger_interval(rt)) as mine:
        if mine:
            ledger.sweep(rt.redis, 2 * visibility, rt.settings.JOB_TTL_SECONDS,
                         lambda work: end_lost(rt, work), time.time())  # fmt: skip


def give_back_lost(rt: WorkerRuntime) -> None:
    redelivery.sweep(rt.redis, rt.settings.WORKER_LOST_AFTER_SECONDS, time.time())


def ledger_interval(rt: WorkerRuntime) -> float:
    return min(ledger.SWEEP_SECONDS, rt.settings.BROKER_VISIBILITY_TIMEOUT_SECONDS / 2)


def liveness_interval(rt: WorkerRuntime) -> float:
    """Heartbeats and redelivery sweeps: four to a WORKER_LOST_AFTER_SECONDS."""
    return min(presence.HEARTBEAT_SECONDS, rt.settings.WORKER_LOST_AFTER_SECONDS / 4)


def _forever(step: Callable[[], None], interval: float, stop: threading.Event) -> None:
    while True:
        try:
            step()
        except Exception as error:  # Redis away for a moment: the next round
            log.warning("%s failed: %s: %s", threading.current_thread().name,
                        type(error).__name__, error)  # fmt: skip
        if stop.wait(interval):
            return


def start(rt: WorkerRuntime, stop: threading.Event) -> None:
    """Run each loop in a daemon thread until `stop` is set."""
    loops = {
        "heartbeat": (lambda: heartbeat(rt), liveness_interval(rt)),
        "ledger-sweep": (lambda: sweep_ledger(rt), ledger_interval(rt)),
        "redelivery-sweep": (lambda: give_back_lost(rt), liveness_interval(rt)),
    }
    for name, (step, interval) in loops.items():
        thread = threading.Thread(target=_forever, args=(step, interval, stop), name=name,
                                  daemon=True)  # fmt: skip
        thread.start()
