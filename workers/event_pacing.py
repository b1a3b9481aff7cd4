"""Task events for Flower, sent in packs at a steady pace rather than one publish per turn.

Celery's worker buffers task events (received, started, succeeded...) and flushes them on
the next turn of its loop: under light load that is a Redis PUBLISH for every event or
two, and it was ~30% of a worker's CPU at one request at a time (py-spy). This consumer
step makes the dispatcher flush at most every TASK_EVENTS_FLUSH_MS (and whenever
TASK_EVENTS_BUFFER events wait), so one PUBLISH carries everything since the last. Flower
sees the same events, that much later. Worker events (heartbeats, online) are not buffered.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from workers import runtime

TASK_EVENTS_BUFFER = 500
"""Events that flush at once, however soon (Celery's default is 24)."""


class EventPacing(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._due = False
        """A flush is scheduled: events sent meanwhile ride along."""

    def start(self, c: Any) -> None:
        """On every (re)start of the consumer: the Events step makes a new dispatcher."""
        dispatcher = c.event_dispatcher
        delay_ms = runtime.current().settings.TASK_EVENTS_FLUSH_MS
        if dispatcher is None or c.hub is None or not delay_ms:
            return
        self._due = False
        dispatcher.buffer_limit = TASK_EVENTS_BUFFER

        def flush() -> None:
            self._due = False  # first: an event sent during the flush schedules the next
            dispatcher.flush()

        def schedule() -> None:  # on the loop's thread: its timer is not thread-safe
            c.hub.call_later(delay_ms / 1000, flush)

        def buffered() -> None:  # from any thread
            if not self._due:
                self._due = True
                c.hub.call_soon(schedule)

        dispatcher.on_send_buffered = buffered

    def shutdown(self, c: Any) -> None:
        """Send what waits before the Events step closes the dispatcher."""
        if c.event_dispatcher is not None:
            c.event_dispatcher.flush()
