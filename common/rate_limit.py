"""A token bucket per caller in Redis, so one limit holds across every API process.

The bucket holds up to `burst` requests and refills at `per_minute / 60` a second; a
request takes one token or is refused with the time until one is back. FailureWindow
counts refused keys per client address.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from common import redis_keys

# KEYS: bucket hash. ARGV: now (s), refill per second, capacity, ttl (s).
# Returns {allowed 0/1, tokens left (x1000), seconds until the next token (x1000)}.
_TAKE = """
local now, rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
return {allowed, math.floor(tokens * 1000), math.ceil(wait * 1000)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int
    """Seconds until a request would be allowed (0 when one is now)."""
    reset: int
    """Seconds until the bucket is full again."""

    def headers(self) -> dict[str, str]:
        out = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
               "X-RateLimit-Reset": str(self.reset)}  # fmt: skip
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


class RateLimiter:
    """Takes its token in the caller's pipeline, so the request's other reads share the
    round trip (api/auth.py). EVAL, not EVALSHA: a pipeline could not reload a script that
    Redis lost (a restart, SCRIPT FLUSH) without one more round trip, and hashing the
    script's few hundred bytes costs the server microseconds."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.ttl = max(60, math.ceil(burst / self.rate) + 1)

    def take_in(self, pipe: redis.client.Pipeline, bucket: str) -> None:
        """Queue the taking of one token from `bucket`; read its reply with decision()."""
        pipe.eval(_TAKE, 1, bucket, repr(time.time()), self.rate, self.burst, self.ttl)

    def decision(self, reply: list[int]) -> Decision:
        allowed, left, wait = reply
        remaining = int(left) // 1000
        return Decision(
            allowed=bool(allowed), limit=self.burst, remaining=remaining,
            retry_after=max(1, math.ceil(int(wait) / 1000)) if not allowed else 0,
            reset=math.ceil((self.burst - int(left) / 1000) / self.rate),
        )  # fmt: skip


class FailureWindow:
    """Refused keys per client address, in fixed one-minute windows: past `limit`, every
    call from the address gets 429 (a valid key's too) until its window ends."""

    SECONDS = 60

    def __init__(self, client: redis.Redis, limit: int) -> None:
        self.redis = client
        self.limit = limit

    def read_in(self, pipe: redis.client.Pipeline, address: str) -> None:
        """Queue the reads that blocked() takes (two replies)."""
        pipe.get(redis_keys.auth_failures(address))
        pipe.pttl(redis_keys.auth_failures(address))

    def blocked(self, count: bytes | None, ttl_ms: int) -> int | None:
        """Seconds until the address may try again, or None if it may now."""
        if int(count or 0) < self.limit:
            return None
        return max(1, math.ceil(ttl_ms / 1000)) if ttl_ms > 0 else self.SECONDS

    def note(self, address: str) -> None:
        """Count one refused key (the window starts with the first)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(redis_keys.auth_failures(address), 0, ex=self.SECONDS, nx=True)
            pipe.incr(redis_keys.auth_failures(address))
            pipe.execute()
