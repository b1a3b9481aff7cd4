"""kombu's Redis transport, with one Redis client per channel for its plain commands, and
messages that can be written by a pipeline of ours.

kombu builds a new `redis.Redis` for every publish, event and ack (`conn_or_acquire`):
the connection comes from the pool, but the client's construction alone was ~7% of a
worker's CPU and showed in the API's sends. A client over a pool is safe to share between
threads, so each channel keeps one. `install()` makes kombu's `redis` and `rediss` names
load this class (common/queueing.make_celery calls it), so URLs keep their scheme: Flower's
broker page, for one, picks its Redis client by it.

`joined(pipe)`: a message published in that block is queued on `pipe`, through kombu's own
batch hook (the `_publish_batch` of `Channel._put`), and sent when `pipe` runs: with a
transaction, in one round trip and one MULTI with what else it holds (the job and its
ledger note, api/dispatch.py). The broker and the rest share REDIS_URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from typing import Any

import redis
from kombu import transport
from kombu.transport import redis as kombu_redis
from redis.client import Pipeline

_joined: ContextVar[Pipeline | None] = ContextVar("joined_pipeline", default=None)


@contextmanager
def joined(pipe: Pipeline) -> Iterator[None]:
    """Messages published in this block (in this thread or greenlet) go out when `pipe`
    runs; the caller runs it."""
    token = _joined.set(pipe)
    try:
        yield
    finally:
        _joined.reset(token)


class _Into:
    """kombu's publish-batch interface (`add`) over a pipeline of ours."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def add(self, name: str, *args: Any) -> None:
        getattr(self.pipe, name)(*args)


class Channel(kombu_redis.Channel):
    @cached_property
    def _plain_client(self) -> redis.Redis:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client or self._plain_client

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        pipe = _joined.get()
        if pipe is not None and "_publish_batch" not in kwargs:
            kwargs["_publish_batch"] = _Into(pipe)
        super()._put(queue, message, **kwargs)


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    for scheme in ("redis", "rediss"):
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        transport._transport_cache.pop(scheme, None)
