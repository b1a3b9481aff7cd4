"""The embedding cache: an in-process LRU in front of a shared Redis cache.

Keys hash the model, its revision, the options that change the vector, the scope (the
API key whose entries they are, with CACHE_SCOPE=key; '' when shared) and the text, and
carry three generation numbers (global, per model, per scope). Clearing bumps a
generation: O(1), and TTLs reclaim the orphaned entries. Every clear also bumps one epoch
counter, which the API reads in each request's first round trip (api/auth.py): a process
reads generations again only when the epoch moved, so a clear reaches every process's next
request, and a cache hit costs that one round trip and no other.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Sequence

import numpy as np
import redis

from common import redis_keys
from common.lru import LRU
from common.registry import ModelSpec
from common.schemas import EmbedOptions

# KEYS: the entry keys. ARGV: stats hash, hits already found in the LRU, count (1/0).
# Returns the values (false where missing) and counts hits and misses in one round trip.
_LOOKUP = """
local values = redis.call('MGET', unpack(KEYS))
if ARGV[3] == '1' then
  local hits = 0
  for i = 1, #KEYS do if values[i] then hits = hits + 1 end end
  redis.call('HINCRBY', ARGV[1], 'hits', hits + tonumber(ARGV[2]))
  redis.call('HINCRBY', ARGV[1], 'misses', #KEYS - hits)
end
return values
"""


Generations = tuple[int, int, int]
"""Global, model, scope."""


def entry_keys(
    spec: ModelSpec, options: EmbedOptions, texts: Sequence[str], generations: Generations,
    scope: str = "",
) -> list[str]:  # fmt: skip
    identity = f"{spec.name}\0{spec.revision}\0{spec.dimensions}\0{options.model_dump_json()}"
    prefix = (f"{identity}\0{scope}\0" if scope else identity + "\0").encode()
    stem = redis_keys.cache_entry_prefix(generations)
    return [stem + hashlib.blake2b(prefix + t.encode(), digest_size=16).hexdigest() for t in texts]


class EmbeddingCache:
    def __init__(self, client: redis.Redis, ttl_seconds: int, local_size: int) -> None:
        self.redis = client
        # LRU with the same TTL as Redis, so an entry never outlives its shared copy.
        self._local: LRU[str, bytes] | None = LRU(local_size, ttl_seconds) if local_size else None
        self._lock = threading.Lock()
        self._lookup = client.register_script(_LOOKUP)
        self._unsent_hits = 0
        # (model, scope) -> (the epoch they were read at, their generations); bounded.
        self._generations: LRU[tuple[str, str], tuple[int, Generations]] = LRU(4096)

    def generations(self, model: str, epoch: int | None = None, scope: str = "") -> Generations:
        """The global, the model's and the scope's generation (0 for the shared scope '').
        `epoch`: the clear counter as the caller read it (read_epoch_in); generations read
        at that epoch are not read again."""
        known = self._generations.get((model, scope))
        if epoch is not None and known is not None and known[0] == epoch:
            return known[1]
        names = [
            redis_keys.CACHE_EPOCH,
            redis_keys.CACHE_GENERATION,
            redis_keys.cache_model_generation(model),
        ]
        if scope:
            names.append(redis_keys.cache_scope_generation(scope))
        read_at, *found = (int(value or 0) for value in self.redis.mget(names))
        generations = (found[0], found[1], found[2] if scope else 0)
        self._generations.put((model, scope), (read_at, generations))
        return generations

    def read_epoch_in(self, pipe: redis.client.Pipeline) -> None:
        """Queue a read of the clear counter (its reply: epoch_from), then the hits not yet
        in Redis, on the caller's pipeline."""
        pipe.get(redis_keys.CACHE_EPOCH)
        self.send_unsent_hits(pipe)

    @staticmethod
    def epoch_from(reply: bytes | None) -> int:
        return int(reply or 0)

    def keys_for(
        self,
        spec: ModelSpec,
        options: EmbedOptions,
        texts: Sequence[str],
        epoch: int | None = None,
        scope: str = "",
    ) -> list[str]:
        generations = self.generations(spec.name, epoch, scope)
        return entry_keys(spec, options, texts, generations, scope)

    def get_many(self, entry_keys: list[str], count: bool = True) -> list[bytes | None]:
        """Packed vectors per key (None where missing): the LRU first, then one Redis call.

        `count` adds the lookup to the hit/miss figures; a caller that may look again
        (the API before it hands a partial hit to a worker) passes False.
        """
        found: list[bytes | None] = (
            self._local.get_many(entry_keys)
            if self._local is not None
            else [None] * len(entry_keys)
        )
        missing = [i for i, value in enumerate(found) if value is None]
        local_hits = len(entry_keys) - len(missing)
        if not missing:
            if count:
                self.count_hits(local_hits)
            return found
        values = self._lookup(
            keys=[entry_keys[i] for i in missing],
            args=[redis_keys.CACHE_STATS, local_hits, int(count)],
        )
        for i, value in zip(missing, values, strict=True):
            found[i] = value or None
        self.remember(
            [entry_keys[i] for i in missing if found[i]], [found[i] for i in missing if found[i]]
        )
        return found

    def local_entries(self) -> int:
        """Vectors held in this process's LRU (the `cache_size` metric)."""
        return len(self._local) if self._local is not None else 0

    def count_hits(self, hits: int) -> None:
        """Hits answered from this process's LRU: sent with its next request's first round
        trip (read_epoch_in), or with stats()."""
        with self._lock:
            self._unsent_hits += hits

    def send_unsent_hits(self, pipe: redis.client.Pipeline) -> None:
        """Add the hits not yet in Redis to `pipe` (before it reads the figures)."""
        with self._lock:
            hits, self._unsent_hits = self._unsent_hits, 0
        if hits:
            pipe.hincrby(redis_keys.CACHE_STATS, "hits", hits)

    def remember(self, entry_keys: list[str], packed: Sequence[bytes | None]) -> None:
        """Keep vectors in this process's LRU."""
        if self._local is not None:
            pairs = zip(entry_keys, packed, strict=True)
            self._local.put_many((key, value) for key, value in pairs if value is not None)

    def put_many(self, entry_keys: list[str], matrix: np.ndarray, ttl_seconds: int) -> None:
        """Write vectors to the shared cache (workers do this after a forward pass)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key, row in zip(entry_keys, matrix, strict=True):
                pipe.set(key, np.ascontiguousarray(row, dtype="<f4").tobytes(), ex=ttl_seconds)
            pipe.execute()

    def clear(self, model: str | None = None, scope: str | None = None) -> int:
        """Invalidate every entry, one model's or one scope's (an API key's); returns the
        new generation. A scope's clear leaves this process's LRU to the others' entries.

        The epoch starts at a random number, so a Redis that lost its data (restarted
        without persistence) never counts back to an epoch some process still remembers
        with the generations of before.
        """
        if scope:
            key = redis_keys.cache_scope_generation(scope)
        else:
            key = redis_keys.cache_model_generation(model) if model else redis_keys.CACHE_GENERATION
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.set(redis_keys.CACHE_EPOCH, secrets.randbits(48), nx=True)
            pipe.incr(redis_keys.CACHE_EPOCH)
            generation = int(pipe.execute()[0])
        if self._local is not None and not scope:
            self._local.clear()
        return generation

    def stats(self) -> dict[str, float | int]:
        with self.redis.pipeline(transaction=False) as pipe:
            self.send_unsent_hits(pipe)
            pipe.hgetall(redis_keys.CACHE_STATS)
            raw = pipe.execute()[-1]
        hits, misses = int(raw.get(b"hits", 0)), int(raw.get(b"misses", 0))
        return {
            "entries": len(self._local) if self._local is not None else 0,
            "hits": hits,
            "misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        }
