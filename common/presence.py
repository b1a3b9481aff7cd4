"""Worker heartbeats in one Redis hash, so /health answers without a Celery broadcast."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import redis

from common import redis_keys

HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    queues: list[str]
    device: str
    models: list[str] = field(default_factory=list)
    pid: int = 0
    seen_at: float = 0.0


def beat(client: redis.Redis, info: WorkerInfo) -> None:
    payload = asdict(info) | {"seen_at": time.time()}
    client.hset(redis_keys.WORKERS, info.name, json.dumps(payload))


def forget(client: redis.Redis, name: str) -> None:
    client.hdel(redis_keys.WORKERS, name)


def online(client: redis.Redis) -> list[WorkerInfo]:
    """Workers heard from recently; stale entries are removed on the way."""
    now = time.time()
    alive, stale = [], []
    for raw in client.hvals(redis_keys.WORKERS):
        info = WorkerInfo(**json.loads(raw))
        (alive if now - info.seen_at < STALE_AFTER_SECONDS else stale).append(info)
    if stale:
        client.hdel(redis_keys.WORKERS, *(info.name for info in stale))
    return alive
