"""Batching figures in Redis, so the batches the workers really formed can be shown."""

from __future__ import annotations

import redis

from common import keys
from workers.batcher import CollectionStats, PassStats


def size_bucket(n: int) -> int:
    """The smallest power of two >= n: histogram buckets 1, 2, 4, ..."""
    return 1 << max(n - 1, 0).bit_length()


class BatchRecorder:
    def __init__(self, client: redis.Redis, model: str) -> None:
        self.redis = client
        self.key = keys.batch_stats(model)

    def on_pass(self, stats: PassStats) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(self.key, "passes", 1)
            pipe.hincrby(self.key, "pass_texts", stats.texts)
            pipe.hincrby(self.key, "tokens", stats.tokens)
            pipe.hincrby(self.key, "padded_tokens", stats.padded_tokens)
            pipe.hincrby(self.key, f"size_le_{size_bucket(stats.texts)}", 1)
            pipe.hincrbyfloat(self.key, "seconds", stats.seconds)
            pipe.execute()

    def on_collection(self, stats: CollectionStats) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(self.key, "collections", 1)
            pipe.hincrby(self.key, "requests", stats.requests)
            pipe.hincrby(self.key, "texts", stats.texts)
            pipe.hincrby(self.key, "distinct_texts", stats.distinct)
            pipe.execute()
