"""Concurrent sync calls for the same work, in one API process, gathered into one send.

A call goes out at once while no send of its key is being collected, so a lone client
never waits. Otherwise it opens a group (or joins the open one), and the group's first
call sends the whole group with one `send` as soon as that send is collected, the group
is full, or `window_s` has passed: the busier the key, the bigger its groups. A background
thread runs `collect` once per send and wakes every call with its own outcome. Each call
waits only as long as it is willing to; one that gives up still has the id `send` gave
it.

Threads here are greenlets under gunicorn's gevent worker (it patches threading and time).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Sent = TypeVar("Sent")
Result = TypeVar("Result")


@dataclass
class Ticket(Generic[Item, Result]):
    """One call's place in a group: its item, then its id and outcome."""

    item: Item
    size: int
    id: str = ""
    result: Result | None = None
    error: BaseException | None = None
    sent: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Group(Generic[Item, Result]):
    tickets: list[Ticket[Item, Result]] = field(default_factory=list)
    size: int = 0
    sealed: bool = False
    go: threading.Event = field(default_factory=threading.Event)
    """Set when the group is sealed: its leader sends it."""


class Gatherer(Generic[Item, Sent, Result]):
    """`send(items)` -> (one id per item, what `collect` needs); `collect(sent)` -> one
    result per item, or raises for them all. `max_size` bounds a group's summed sizes."""

    def __init__(
        self,
        send: Callable[[list[Item]], tuple[list[str], Sent]],
        collect: Callable[[Sent], Sequence[Result]],
        window_s: float,
        max_size: int,
    ) -> None:
        self._send, self._collect = send, collect
        self.window_s, self.max_size = window_s, max_size
        self._lock = threading.Lock()
        self._open: dict[Hashable, Group[Item, Result]] = {}
        self._in_flight: dict[Hashable, int] = {}

    def submit(self, key: Hashable, item: Item, size: int) -> Ticket[Item, Result]:
        """Send `item` (alone or with others); the ticket has its id once this returns.
        Raises what `send` raised."""
        ticket: Ticket[Item, Result] = Ticket(item, size)
        with self._lock:
            group = self._open.get(key)
            if group is not None and group.size + size > self.max_size:
                self._seal(key, group)  # its leader sends it now; this call starts anew
                group = None
            leader = group is None
            if group is None:
                group = Group()
                self._open[key] = group
            group.tickets.append(ticket)
            group.size += size
            if not self._in_flight.get(key) or self.window_s <= 0 or group.size >= self.max_size:
                self._seal(key, group)
        if leader:
            if not group.go.wait(self.window_s):
                with self._lock:
                    self._seal(key, group)
            self._dispatch(key, group)
        else:
            ticket.sent.wait()  # set by the leader once sent (or failed to send)
        if ticket.error is not None:
            raise ticket.error
        return ticket

    def _seal(self, key: Hashable, group: Group[Item, Result]) -> None:
        """Close the group to new calls; it counts as in flight from now on."""
        if group.sealed:
            return
        group.sealed = True
        group.go.set()
        if self._open.get(key) is group:
            del self._open[key]
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def _dispatch(self, key: Hashable, group: Group[Item, Result]) -> None:
        """Send the group; wake the others with their ids (or the error); collect apart."""
        tickets = group.tickets
        try:
            ids, sent = self._send([t.item for t in tickets])
        except BaseException as error:
            self._landed(key)
            _settle(tickets, "sent", error=error)
            raise
        _settle(tickets, "sent", id=ids)
        threading.Thread(target=self._finish, args=(key, tickets, sent), daemon=True).start()

    def _finish(self, key: Hashable, tickets: list[Ticket[Item, Result]], sent: Sent) -> None:
        try:
            results = self._collect(sent)
        except BaseException as error:  # handed to every waiting call
            _settle(tickets, "done", error=error)
        else:
            _settle(tickets, "done", result=results)
        finally:
            self._landed(key)

    def _landed(self, key: Hashable) -> None:
        """A send of `key` is over: the key's open group, if any, goes now."""
        with self._lock:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
            group = self._open.get(key)
            if group is not None:
                self._seal(key, group)


def _settle(
    tickets: list[Ticket[Item, Result]],
    event: str,
    error: BaseException | None = None,
    **per_ticket: Sequence[object],
) -> None:
    """Give every ticket the error, or its own value of each `per_ticket` field; then set
    its `event` ("sent" or "done")."""
    for i, ticket in enumerate(tickets):
        ticket.error = error
        for name, values in per_ticket.items():
            setattr(ticket, name, values[i])
        getattr(ticket, event).set()
