"""Redis connections with timeouts that fail fast when Redis is down."""

from __future__ import annotations

import redis

SOCKET_TIMEOUT_SECONDS = 5.0
"""Longer than any single blocking call we make (waits are cut into shorter BLPOPs)."""


def connect(url: str, max_connections: int | None = None) -> redis.Redis:
    """A binary-safe client (vectors are bytes) on its own connection pool."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections,
    )
