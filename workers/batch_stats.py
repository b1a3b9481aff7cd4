"""Batching figures in Redis, so the batches the workers really formed can be shown.

The model's thread only adds them up in memory; a thread of their own writes them to
Redis (one round trip) within FLUSH_SECONDS, so no forward pass waits on Redis."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import redis

from common import redis_keys
from workers.batcher import CollectionStats, PassStats

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1


def size_bucket(n: int) -> int:
    """The smallest power of two >= n: histogram buckets 1, 2, 4, ..."""
    return 1 << max(n - 1, 0).bit_length()


class BatchRecorder:
    def __init__(self, client: redis.Redis, model: str) -> None:
        self.redis = client
        self.key = redis_keys.batch_stats(model)
        self._counts: Counter[str] = Counter()
        self._seconds = 0.0
        self._lock = threading.Lock()
        self._pending = threading.Event()
        threading.Thread(target=self._flush_forever, daemon=True,
                         name=f"batch-stats-{model}").start()  # fmt: skip

    def on_pass(self, stats: PassStats) -> None:
        with self._lock:
            self._counts.update(
                {"passes": 1, "pass_texts": stats.texts, "tokens": stats.tokens,
                 "padded_tokens": stats.padded_tokens, f"size_le_{size_bucket(stats.texts)}": 1}
            )  # fmt: skip
            self._seconds += stats.seconds
        self._pending.set()

    def on_collection(self, stats: CollectionStats) -> None:
        with self._lock:
            self._counts.update(
                {"collections": 1, "requests": stats.requests, "texts": stats.texts,
                 "distinct_texts": stats.distinct}
            )  # fmt: skip
        self._pending.set()

    def flush(self) -> None:
        """Write what was added up since the last flush."""
        with self._lock:
            counts, seconds = self._counts, self._seconds
            self._counts, self._seconds = Counter(), 0.0
            self._pending.clear()
        if not counts:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for name, value in counts.items():
                    pipe.hincrby(self.key, name, value)
                if seconds:
                    pipe.hincrbyfloat(self.key, "seconds", seconds)
                pipe.execute()
        except redis.RedisError as error:  # figures only: never fail work over them
            log.warning("batch figures not written: %s", error)

    def _flush_forever(self) -> None:
        while True:
            self._pending.wait()
            time.sleep(FLUSH_SECONDS)
            self.flush()
