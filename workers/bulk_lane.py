"""The bulk lane: index batches, consumed apart from Celery's pool.

Celery's pool runs interactive tasks (sync calls, jobs). A worker reserves one message per
pool slot across all the queues it consumes, so a deep queue of index batches would hold
every slot, and an interactive message would wait for a whole batch to end before it was
even taken. So each queue's bulk lane (`<queue>-bulk`, common/queueing.bulk_lane) has a
consumer of its own: a Celery consumer bootstep on its own channel that holds at most
INDEX_CONCURRENCY messages and runs them on as many threads, while the batcher serves
interactive texts first (workers/batcher.py). It sends the task events Celery's pool would
(received, started, succeeded), so Flower shows bulk work too. A message is acked once its
task returns, as with Celery's acks_late, so kombu's unacked hash, the visibility timeout and the
redelivery of a lost worker's messages (workers/redelivery.py) cover it too. The tasks
are the ones workers/indexing.py registers, found by the name in the message's headers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import bootsteps
from celery.exceptions import Reject
from kombu import Consumer, Message, Queue

from common import logs
from common.queueing import INDEX_BATCH_TASK, INDEX_FINISH_TASK, is_bulk_lane
from workers import indexing, runtime

log = logging.getLogger(__name__)

TASKS: dict[str, Callable[[dict[str, Any]], None]] = {
    INDEX_BATCH_TASK: indexing.index_batch,
    INDEX_FINISH_TASK: indexing.index_finish,
}

held: set[str] = set()
"""Delivery tags of the bulk messages this process holds (its heartbeat names them)."""
_held_lock = threading.Lock()


class BulkLane(bootsteps.ConsumerStep):
    """Consume the worker's bulk lanes with INDEX_CONCURRENCY messages in flight."""

    requires = ("celery.worker.consumer:Connection", "celery.worker.consumer:Events")
    executor: ThreadPoolExecutor | None = None
    call_soon: Callable[..., Any] | None = None
    consumer: Any = None

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._unsettled: dict[str, Callable[[], None]] = {}
        """Messages whose task is done, by tag: how to settle each (ack or requeue)."""
        self._unsettled_lock = threading.Lock()

    def start(self, c: Any) -> None:
        self.call_soon, self.consumer = c.call_soon, c
        super().start(c)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        rt = runtime.current()
        lanes = [Queue(name) for name in rt.queues if is_bulk_lane(name)]
        if not lanes:
            return []
        size = rt.settings.INDEX_CONCURRENCY
        self.executor = ThreadPoolExecutor(size, thread_name_prefix="bulk")
        return [Consumer(channel, queues=lanes, callbacks=[self._received], accept=["json"],
                         prefetch_count=size)]  # fmt: skip

    def _received(self, body: Any, message: Message) -> None:
        with _held_lock:
            held.add(str(message.delivery_tag))
        headers = message.headers or {}
        self._event("task-received", message, name=headers.get("task"),
                    args=headers.get("argsrepr"), kwargs=headers.get("kwargsrepr"),
                    retries=0, root_id=headers.get("root_id"),
                    parent_id=headers.get("parent_id"))  # fmt: skip
        assert self.executor is not None
        self.executor.submit(self._handle, body, message)

    def _handle(self, body: Any, message: Message) -> None:
        """Run the task, then settle its message on the consumer's thread, which this
        wakes: it takes the next message at once, where an ack from this thread left the
        lane idle until the consumer's loop turned again (up to a second)."""
        self._event("task-started", message)
        started = time.monotonic()
        settle = _run(body, message)
        tag = str(message.delivery_tag)
        with self._unsettled_lock:
            self._unsettled[tag] = settle
        assert self.call_soon is not None
        self.call_soon(self._settle, tag)
        if settle == message.ack:
            self._event("task-succeeded", message, result="None",
                        runtime=time.monotonic() - started)  # fmt: skip
        else:  # requeued
            self._event("task-retried", message, exception="Redis was away")

    def _settle(self, tag: str) -> None:
        with self._unsettled_lock:
            entry = self._unsettled.pop(tag, None)
        if entry is not None:
            entry()
            with _held_lock:
                held.discard(tag)

    def _event(self, kind: str, message: Message, **fields: Any) -> None:
        """A task event for Flower, as Celery's pool sends for its own tasks, sent from the
        consumer's thread."""
        events = getattr(self.consumer, "event_dispatcher", None)  # made by the Events step
        if events is not None and events.enabled and self.call_soon is not None:
            uuid = (message.headers or {}).get("id")
            self.call_soon(events.send, kind, uuid=uuid, **fields)

    def shutdown(self, c: Any) -> None:
        """A warm stop: the batches in hand finish (and are acked) before the channel goes."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        for tag in list(self._unsettled):  # the consumer's loop has stopped: settle them here
            self._settle(tag)
        super().shutdown(c)


def _run(body: Any, message: Message) -> Callable[[], None]:
    """Run the message's task; how to settle the message."""
    headers = message.headers or {}
    name = str(headers.get("task"))
    logs.start(request_id=headers.get("request_id"), task_id=headers.get("id"))
    try:
        args = body[0] if isinstance(body, list | tuple) and body else []
        TASKS[name](*args)
    except Reject:  # Redis was away: back on the queue, done again later
        return message.requeue
    except Exception:  # the task fails its batch itself; this is a message it cannot read
        log.exception("bulk message %s (%s) dropped", message.delivery_tag, name)
    finally:
        logs.clear()
    return message.ack


def held_tags() -> list[str]:
    with _held_lock:
        return sorted(held)
