"""Redis connections with timeouts that fail fast when Redis is down, over TLS for a
rediss:// REDIS_URL."""

from __future__ import annotations

import queue
import ssl
import sys
from collections.abc import Mapping

import redis

from common.settings import Settings

SOCKET_TIMEOUT_SECONDS = 5.0
"""Longer than any single blocking call we make (waits are cut into shorter BLPOPs)."""


def tls_options(settings: Settings) -> dict[str, object]:
    """redis-py's TLS arguments for a rediss:// REDIS_URL (empty for any other): the
    server's certificate always verified, against REDIS_TLS_CA_FILE or the system's CAs.
    Celery's broker_use_ssl and Flower's broker page take the same keys."""
    if not settings.REDIS_URL.startswith("rediss://"):
        return {}
    files = {
        "ssl_ca_certs": settings.REDIS_TLS_CA_FILE,
        "ssl_certfile": settings.REDIS_TLS_CERT_FILE,
        "ssl_keyfile": settings.REDIS_TLS_KEY_FILE,
    }
    # Explicit: kombu turns verification off for a rediss:// URL given no options.
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED} | {k: str(v) for k, v in files.items() if v}


def _pool_queue() -> type[queue.LifoQueue]:
    """The blocking pool's queue of idle connections: gevent's where gevent has patched the
    process (the API's gunicorn workers), as redis-py#1147 advises. The standard one waits
    through a patched threading.Condition: cache hits at 16 connections on 2 saturated
    cores spent up to 900 ms getting or returning a connection. Alternated with it, hits
    over 100 ms fell from 116-169 to 84-95 of ~5,700."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        from gevent.queue import LifoQueue

        return LifoQueue  # type: ignore[no-any-return]
    return queue.LifoQueue


def connect(
    url: str,
    max_connections: int | None = None,
    tls: Mapping[str, object] | None = None,
    wait: bool = False,
) -> redis.Redis:
    """A binary-safe client (vectors are bytes) on its own connection pool; `tls`:
    tls_options() for a rediss:// URL. `wait`: a call finding all `max_connections` busy
    waits up to SOCKET_TIMEOUT_SECONDS for one (the API's greenlets), instead of failing."""
    pool = redis.BlockingConnectionPool if wait else redis.ConnectionPool
    options = {"timeout": SOCKET_TIMEOUT_SECONDS, "queue_class": _pool_queue()} if wait else {}
    client = redis.Redis(
        connection_pool=pool.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_keepalive=True,
            health_check_interval=30,
            max_connections=max_connections,
            **options,
            **(tls or {}),
        )
    )
    client.auto_close_connection_pool = True  # as Redis.from_url does: close() closes it
    return client
