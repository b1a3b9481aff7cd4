"""What new work may put in Redis: refused while Redis is nearly full (507), while the
queues hold MAX_QUEUED_BYTES (503), past the caller's storage share (507), and when it
is bigger than a limit could ever take (413). common/storage.py counts the bytes."""

from __future__ import annotations

import secrets
import time

import redis

from api import dispatch
from api.services import Services
from common import storage
from common.api_keys import ApiKey
from common.errors import InsufficientStorage, PayloadTooLarge, QueueFull
from common.settings import Settings

QUEUE_RETRY_SECONDS = 5


ROOM_OK_SECONDS = 1.0
ROOM_SHARE = 0.1
"""After a check finds room, a process admits up to this share of the room it found, for
at most ROOM_OK_SECONDS, before it asks Redis again (INFO is not a cheap command)."""
_room: dict[int, tuple[float, float]] = {}
"""Per Redis client pool: (when the room was checked, the bytes still trusted)."""


def check_room(client: redis.Redis, max_fill: float, size: int = 0) -> None:
    """Refuse new work (`size` bytes) while Redis is nearly full, rather than lose accepted
    work later. noeviction stays the hard stop: a write Redis refuses is a 507 too."""
    pool = id(client.connection_pool)
    checked_at, trusted = _room.get(pool, (0.0, 0.0))
    if time.monotonic() - checked_at < ROOM_OK_SECONDS and size <= trusted:
        _room[pool] = (checked_at, trusted - size)
        return
    memory = client.info("memory")
    limit, used = int(memory.get("maxmemory", 0)), int(memory["used_memory"])
    if limit and used > max_fill * limit:
        raise InsufficientStorage(
            f"Redis is {used / limit:.0%} full (limit {max_fill:.0%}): "
            "let finished jobs' results expire (JOB_TTL_SECONDS), or give Redis more memory"
        )
    room = max_fill * limit - used if limit else float(1 << 40)
    _room[pool] = (time.monotonic(), ROOM_SHARE * room - size)


def quota(settings: Settings, key: ApiKey | None) -> tuple[str, int]:
    """What its owner may hold in Redis (files and queued texts), and the limit's name:
    the key's own `storage_bytes`, else STORAGE_BYTES_PER_KEY."""
    if key is not None and key.limits.storage_bytes is not None:
        return "this key's storage_bytes", key.limits.storage_bytes
    return "STORAGE_BYTES_PER_KEY", settings.STORAGE_BYTES_PER_KEY


def admit(
    svc: Services, owner: str, size: int, what: str, *, key: ApiKey | None = None,
    queued: bool = True, item: str | None = None, checked: bool = True,
    ttl_seconds: float | None = None, queue: str | None = None,
) -> storage.Hold | None:  # fmt: skip
    """Refuse `what` (`size` bytes) if a limit would not take it now or ever, or while
    `queue` holds more than MAX_QUEUE_DEPTH tasks (503); with `item`, hold the bytes under
    it (`queued`: a task's texts, released when a worker takes it; else a file's) for at
    most `ttl_seconds` (JOB_TTL_SECONDS). `key`: the owner's key, for its own storage
    limit. `checked=False` holds without a check: the rest of an upload that was admitted
    whole."""
    settings = svc.settings
    buckets = storage.task_buckets(owner) if queued else [storage.owner_bucket(owner)]
    named = [quota(settings, key)]
    if queued:
        named.append(("MAX_QUEUED_BYTES", settings.MAX_QUEUED_BYTES))
    if checked:
        check_room(svc.redis, settings.REDIS_MAX_FILL_RATIO, size)
        for name, limit in named:
            if size > limit:
                raise PayloadTooLarge(
                    f"{what}: {size} bytes, more than {name} ({limit}) allows at once; "
                    "send less at a time"
                )
    limits = [limit if checked else 0 for _, limit in named]
    ttl = ttl_seconds or settings.JOB_TTL_SECONDS
    longest = storage.Queue(queue, settings.MAX_QUEUE_DEPTH) if queue else None
    full = storage.hold(svc.redis, buckets, limits, size, item, ttl, longest)
    if full is not None and full.queue:
        raise dispatch.too_deep(svc, full.bucket, full.used)
    if full is not None:
        name, limit = named[buckets.index(full.bucket)]
        held = f"{full.used} bytes held, and {what} ({size} bytes) would pass {name} ({limit})"
        if full.bucket == storage.QUEUED:
            raise QueueFull(f"the queues are full: {held}; retry later or add workers",
                            retry_after=QUEUE_RETRY_SECONDS)  # fmt: skip
        raise InsufficientStorage(
            f"this key's storage is full: {held}. It frees as its queued work starts and as "
            "its files are deleted (DELETE /v1/files/<id>) or expire"
        )
    return storage.Hold(owner=owner, item=item) if item else None


def new_item() -> str:
    return "t" + secrets.token_hex(8)


def release(svc: Services, held: storage.Hold) -> None:
    """Give back the bytes of a task that will not be sent."""
    storage.started(svc.redis, [held])
