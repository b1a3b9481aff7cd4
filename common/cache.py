"""The embedding cache: an in-process LRU in front of a shared Redis cache.

Keys hash the model, its revision, the options that change the vector and the text, and
carry two generation numbers (global and per model). Clearing bumps a generation: O(1),
every API process sees it on its next lookup, and TTLs reclaim the orphaned entries.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
import redis
from cachetools import TTLCache

from common import keys
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


def entry_keys(
    spec: ModelSpec, options: EmbedOptions, texts: Sequence[str], generations: tuple[int, int]
) -> list[str]:
    identity = f"{spec.name}\0{spec.revision}\0{spec.dimensions}\0{options.model_dump_json()}"
    prefix = (identity + "\0").encode()
    stem = keys.cache_entry_prefix(*generations)
    return [stem + hashlib.blake2b(prefix + t.encode(), digest_size=16).hexdigest() for t in texts]


class EmbeddingCache:
    def __init__(self, client: redis.Redis, ttl_seconds: int, local_size: int) -> None:
        self.redis = client
        # LRU with the same TTL as Redis, so an entry never outlives its shared copy.
        self._local: TTLCache[str, bytes] | None = (
            TTLCache(local_size, ttl_seconds) if local_size else None
        )
        self._lock = threading.Lock()
        self._lookup = client.register_script(_LOOKUP)
        self._unsent_hits = 0

    def generations(self, model: str) -> tuple[int, int]:
        """The global and the model's generation; the hits counted since the last call
        travel in the same round trip (a cache hit then costs one Redis call, not two)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([keys.CACHE_GENERATION, keys.cache_model_generation(model)])
            self.send_unsent_hits(pipe)
            values = pipe.execute()[0]
        return int(values[0] or 0), int(values[1] or 0)

    def keys_for(self, spec: ModelSpec, options: EmbedOptions, texts: Sequence[str]) -> list[str]:
        return entry_keys(spec, options, texts, self.generations(spec.name))

    def get_many(self, entry_keys: list[str], count: bool = True) -> list[bytes | None]:
        """Packed vectors per key (None where missing): the LRU first, then one Redis call.

        `count` adds the lookup to the hit/miss figures; a caller that may look again
        (the API before it hands a partial hit to a worker) passes False.
        """
        found: list[bytes | None] = [None] * len(entry_keys)
        if self._local is not None:
            with self._lock:
                for i, key in enumerate(entry_keys):
                    found[i] = self._local.get(key)
        missing = [i for i, value in enumerate(found) if value is None]
        local_hits = len(entry_keys) - len(missing)
        if not missing:
            if count:
                self.count_hits(local_hits)
            return found
        values = self._lookup(
            keys=[entry_keys[i] for i in missing],
            args=[keys.CACHE_STATS, local_hits, int(count)],
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
        """Hits answered from this process's LRU: sent with its next lookup or stats()."""
        with self._lock:
            self._unsent_hits += hits

    def send_unsent_hits(self, pipe: redis.client.Pipeline) -> None:
        """Add the hits not yet in Redis to `pipe` (before it reads the figures)."""
        with self._lock:
            hits, self._unsent_hits = self._unsent_hits, 0
        if hits:
            pipe.hincrby(keys.CACHE_STATS, "hits", hits)

    def remember(self, entry_keys: list[str], packed: Sequence[bytes | None]) -> None:
        """Keep vectors in this process's LRU."""
        if self._local is None:
            return
        with self._lock:
            for key, value in zip(entry_keys, packed, strict=True):
                if value is not None:
                    self._local[key] = value

    def put_many(self, entry_keys: list[str], matrix: np.ndarray, ttl_seconds: int) -> None:
        """Write vectors to the shared cache (workers do this after a forward pass)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key, row in zip(entry_keys, matrix, strict=True):
                pipe.set(key, np.ascontiguousarray(row, dtype="<f4").tobytes(), ex=ttl_seconds)
            pipe.execute()

    def clear(self, model: str | None = None) -> int:
        """Invalidate every entry (or one model's); returns the new generation."""
        key = keys.cache_model_generation(model) if model else keys.CACHE_GENERATION
        generation = int(self.redis.incr(key))
        if self._local is not None:
            with self._lock:
                self._local.clear()
        return generation

    def stats(self) -> dict[str, float | int]:
        with self.redis.pipeline(transaction=False) as pipe:
            self.send_unsent_hits(pipe)
            pipe.hgetall(keys.CACHE_STATS)
            raw = pipe.execute()[-1]
        hits, misses = int(raw.get(b"hits", 0)), int(raw.get(b"misses", 0))
        return {
            "entries": len(self._local) if self._local is not None else 0,
            "hits": hits,
            "misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        }
