"""Usage per key, and the token quotas checked against it, in Redis.

Each key has one hash per UTC day (requests, input tokens and cache hits, in all and per
model) that expires after KEEP_DAYS, a counter per UTC month and one per minute for its
quotas. One Lua script checks the key's token limits and, if they hold, counts the
request: one round trip, and concurrent requests never both take the last tokens.
Periods are calendar periods in UTC, named from the clock: a day's bucket is
`usage_day(owner, "2025-06-01")`, so the next day starts with an empty one.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import redis

from common import redis_keys
from common.api_keys import KeyLimits

KEEP_DAYS = 400
"""How long a day's figures are kept: a year and a bit, then Redis drops them."""
MONTH_KEEP_SECONDS = 62 * 86400

Mode = Literal["check", "charge", "record"]
"""check: refuse if a quota is already spent, count nothing; charge: refuse, or count;
record: count whatever the quotas say (work already accepted, e.g. an index job's)."""

LIMITS = ("tokens_per_minute", "tokens_per_day", "tokens_per_month")

# KEYS: day hash, month counter, minute counter, owners set.
# ARGV: owner, model, tokens, hit (0/1), mode, minute/day/month limits (0: none), day ttl,
# month ttl. Returns nil, or {index of the limit hit (1-3), tokens used so far}.
_CHARGE = """
local n = tonumber(ARGV[3])
if ARGV[5] ~= 'record' then
  local used = {tonumber(redis.call('GET', KEYS[3]) or '0'),
                tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0'),
                tonumber(redis.call('GET', KEYS[2]) or '0')}
  for i = 1, 3 do
    local limit = tonumber(ARGV[5 + i])
    if limit > 0 and used[i] + n > limit then return {i, used[i]} end
  end
  if ARGV[5] == 'check' then return nil end
end
local hit, model = tonumber(ARGV[4]), ARGV[2]
redis.call('HINCRBY', KEYS[1], 'requests', 1)
redis.call('HINCRBY', KEYS[1], 'tokens', n)
redis.call('HINCRBY', KEYS[1], 'hits', hit)
redis.call('HINCRBY', KEYS[1], 'r:' .. model, 1)
redis.call('HINCRBY', KEYS[1], 't:' .. model, n)
redis.call('HINCRBY', KEYS[1], 'h:' .. model, hit)
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('INCRBY', KEYS[2], n)
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('INCRBY', KEYS[3], n)
redis.call('EXPIRE', KEYS[3], 120)
redis.call('SADD', KEYS[4], ARGV[1])
return nil
"""


@dataclass(frozen=True)
class Refusal:
    """A token limit a request would pass."""

    limit: str
    """tokens_per_minute, tokens_per_day or tokens_per_month."""
    allowed: int
    used: int
    retry_after: int
    """Seconds until the period ends."""


def _period_end(limit: str, now: float) -> float:
    at = datetime.fromtimestamp(now, UTC)
    if limit == "tokens_per_minute":
        return (now // 60 + 1) * 60
    if limit == "tokens_per_day":
        return datetime.combine(at.date() + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    days = calendar.monthrange(at.year, at.month)[1]
    first = at.date().replace(day=1) + timedelta(days=days)
    return datetime.combine(first, datetime.min.time(), UTC).timestamp()


class UsageMeter:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._charge = client.register_script(_CHARGE)

    def charge(
        self, owner: str, model: str, tokens: int, hit: bool = False,
        limits: KeyLimits | None = None, mode: Mode = "charge",
    ) -> Refusal | None:  # fmt: skip
        """Count one request of `tokens` input tokens for `owner` (see Mode)."""
        now = time.time()
        at = datetime.fromtimestamp(now, UTC)
        caps = [getattr(limits, name) or 0 if limits else 0 for name in LIMITS]
        reply = self._charge(
            keys=[redis_keys.usage_day(owner, at.date().isoformat()),
                  redis_keys.usage_month(owner, at.strftime("%Y-%m")),
                  redis_keys.usage_minute(owner, int(now // 60)), redis_keys.USAGE_OWNERS],
            args=[owner, model, tokens, int(hit), mode, *caps, KEEP_DAYS * 86400,
                  MONTH_KEEP_SECONDS],
        )  # fmt: skip
        if not reply:
            return None
        name = LIMITS[int(reply[0]) - 1]
        retry = max(1, int(_period_end(name, now) - now + 0.999))
        return Refusal(name, caps[LIMITS.index(name)], int(reply[1]), retry)

    def owners(self) -> list[str]:
        """Every owner with usage recorded."""
        return sorted(m.decode() for m in self.redis.smembers(redis_keys.USAGE_OWNERS))

    def read(self, owners: Iterable[str], first: date, last: date) -> list[dict[str, object]]:
        """One row per (owner, day, model) with figures: requests, input_tokens, cache_hits."""
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        pairs = [(owner, day) for owner in owners for day in days]
        with self.redis.pipeline(transaction=False) as pipe:
            for owner, day in pairs:
                pipe.hgetall(redis_keys.usage_day(owner, day.isoformat()))
            replies = pipe.execute()
        rows: list[dict[str, object]] = []
        for (owner, day), raw in zip(pairs, replies, strict=True):
            figures = {k.decode(): int(v) for k, v in raw.items()}
            models = sorted(k[2:] for k in figures if k.startswith("r:"))
            rows += [{"key": owner, "date": day.isoformat(), "model": model,
                      "requests": figures[f"r:{model}"],
                      "input_tokens": figures.get(f"t:{model}", 0),
                      "cache_hits": figures.get(f"h:{model}", 0)} for model in models]  # fmt: skip
        return rows
