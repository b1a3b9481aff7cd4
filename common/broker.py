"""kombu's Redis transport, with one Redis client per channel for its plain commands.

kombu builds a new `redis.Redis` for every publish, event and ack (`conn_or_acquire`):
the connection comes from the pool, but the client's construction alone was ~7% of a
worker's CPU and showed in the API's sends. A client over a pool is safe to share between
threads, so each channel keeps one. `install()` makes kombu's `redis` and `rediss` names
load this class (common/queueing.make_celery calls it), so URLs keep their scheme: Flower's
broker page, for one, picks its Redis client by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import redis
from kombu import transport
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    @cached_property
    def _plain_client(self) -> redis.Redis:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client or self._plain_client


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    for scheme in ("redis", "rediss"):
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        transport._transport_cache.pop(scheme, None)
