"""Bytes held in Redis per owner and on the queues: what the storage limits count.

An item (one task's payload, one uploaded file) is held in buckets: `owner:<key id>` and,
for a task, `queued`. A bucket is a hash item -> bytes, a sorted set item -> expiry and a
running total. Holding first drops the bucket's expired items, then adds the item only if
every bucket stays within its limit. A task's item goes when a worker takes the task (a
cancelled job's too), a file's when it is deleted; an item nobody releases (a lost
message, a file that expired) drops out at its expiry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import redis
from pydantic import BaseModel

from common import redis_keys

QUEUED = "queued"
PARTS = ("bytes", "until", "total")

# KEYS: (bytes, until, total) per bucket, then a queue. ARGV: item ('' : only check), size,
# expiry (epoch ms), now (epoch ms), the queue's longest length (0: no queue), then one
# limit per bucket (0: none). Returns {0, 0} when held, {-1, its length} when the queue is
# too long, else {the 1-based bucket that is full, its bytes held}.
_HOLD = """
local n = math.floor(#KEYS / 3)
local item, size, expiry, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local longest = tonumber(ARGV[5])
if longest > 0 then
  local length = redis.call('LLEN', KEYS[#KEYS])
  if length > longest then return {-1, length} end
end
for b = 0, n - 1 do
  local sizes, times, total = KEYS[b * 3 + 1], KEYS[b * 3 + 2], KEYS[b * 3 + 3]
  local gone = redis.call('ZRANGEBYSCORE', times, '-inf', now)
  for _, old in ipairs(gone) do
    local s = redis.call('HGET', sizes, old)
    if s then
      redis.call('DECRBY', total, s)
      redis.call('HDEL', sizes, old)
    end
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', times, '-inf', now) end
  local used = tonumber(redis.call('GET', total) or '0')
  local limit = tonumber(ARGV[6 + b])
  if limit > 0 and used + size > limit then return {b + 1, used} end
end
if item == '' then return {0, 0} end
for b = 0, n - 1 do
  local sizes, times, total = KEYS[b * 3 + 1], KEYS[b * 3 + 2], KEYS[b * 3 + 3]
  local before = tonumber(redis.call('HGET', sizes, item) or '0')
  redis.call('HSET', sizes, item, size)
  redis.call('ZADD', times, expiry, item)
  redis.call('INCRBY', total, size - before)
  for _, key in ipairs({sizes, times, total}) do
    if redis.call('PTTL', key) < expiry - tonumber(now) then
      redis.call('PEXPIREAT', key, expiry)
    end
  end
end
return {0, 0}
"""

# KEYS: (bytes, until, total) per bucket. ARGV: item.
_RELEASE = """
for b = 0, #KEYS / 3 - 1 do
  local sizes, times, total = KEYS[b * 3 + 1], KEYS[b * 3 + 2], KEYS[b * 3 + 3]
  local s = redis.call('HGET', sizes, ARGV[1])
  if s then
    redis.call('HDEL', sizes, ARGV[1])
    redis.call('ZREM', times, ARGV[1])
    if redis.call('DECRBY', total, s) <= 0 then redis.call('DEL', sizes, times, total) end
  end
end
"""


class Hold(BaseModel):
    """What a task carries of its held bytes, to release them when it starts."""

    owner: str
    item: str


def owner_bucket(owner: str) -> str:
    return f"owner:{owner}"


def task_buckets(owner: str) -> list[str]:
    """Where a task's bytes count: its owner's share and the queues'."""
    return [owner_bucket(owner), QUEUED]


def text_bytes(texts: list[str]) -> int:
    """What a task's texts weigh: their size as JSON, in UTF-8."""
    return len(orjson.dumps(texts))


def _keys(buckets: list[str]) -> list[str]:
    return [redis_keys.held(bucket, part) for bucket in buckets for part in PARTS]


@dataclass(frozen=True)
class Full:
    """The bucket that a hold would overfill, and the bytes it holds now; or (`queue`) the
    queue that is too long, and its length."""

    bucket: str
    used: int
    queue: bool = False


@dataclass(frozen=True)
class Queue:
    """A queue whose length a hold checks first, in the same round trip."""

    name: str
    longest: int


def hold(
    client: redis.Redis, buckets: list[str], limits: list[int], size: int, item: str | None,
    ttl_seconds: float, queue: Queue | None = None,
) -> Full | None:  # fmt: skip
    """Hold `size` bytes under `item` in each bucket for at most `ttl_seconds` (item None:
    only check); the bucket it would overfill (limit 0: none), or the `queue` if it is
    longer than it may be, or None when it fits."""
    now = int(time.time() * 1000)
    expiry = now + int(ttl_seconds * 1000)
    keys = _keys(buckets) + ([queue.name] if queue else [])
    reply = client.eval(_HOLD, len(keys), *keys, item or "", size, expiry, now,
                        queue.longest if queue else 0, *limits)  # fmt: skip
    full, used = (int(x) for x in reply)
    if full < 0:
        assert queue is not None
        return Full(queue.name, used, queue=True)
    return Full(buckets[full - 1], used) if full else None


def release(client: redis.Redis, buckets: list[str], item: str) -> None:
    client.eval(_RELEASE, len(buckets) * 3, *_keys(buckets), item)


def started(client: redis.Redis, holds: list[Hold]) -> None:
    """At the start of a task: its texts no longer wait (a pipeline: in its round trip)."""
    for held in holds:
        release(client, task_buckets(held.owner), held.item)


def used(client: redis.Redis, bucket: str) -> int:
    """Bytes the bucket holds (expired items included until the next hold drops them)."""
    return int(client.get(redis_keys.held(bucket, "total")) or 0)
