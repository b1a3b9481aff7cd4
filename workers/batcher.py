"""Cross-request batching: many small requests for one model become one forward call.

Task threads submit their texts and wait on a future. One model thread takes whatever is
queued when it is free (waiting at most `wait_s` after the first item for more), up to a
token budget, hands the whole collection to the encoder (which sorts by length and runs
passes of batch_size), and gives each submitter back its own rows in its own order.
While the model is busy new requests pile up, so batches grow with load and an idle
service adds no wait beyond `wait_s`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from workers.providers.base import Encoder

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    texts: list[str]
    tokens: int
    future: Future[np.ndarray] = field(default_factory=Future)


@dataclass(frozen=True)
class BatchStats:
    texts: int
    requests: int
    tokens: int
    seconds: float


class Batcher:
    def __init__(
        self,
        encoder: Encoder,
        max_tokens: int,
        wait_s: float,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.max_tokens = max_tokens
        self.wait_s = wait_s
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"batcher-{encoder.name}", daemon=True
        )
        self._thread.start()

    def submit(self, texts: list[str], tokens: int) -> Future[np.ndarray]:
        pending = _Pending(texts, tokens)
        self._queue.put(pending)
        return pending.future

    def _collect(self) -> list[_Pending]:
        batch = [self._queue.get()]
        tokens = batch[0].tokens
        deadline = time.monotonic() + self.wait_s
        while tokens < self.max_tokens:
            try:
                # Whatever piled up while the model was busy; then a short wait for more.
                left = deadline - time.monotonic()
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
            tokens += item.tokens
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            texts = [text for item in batch for text in item.texts]
            started = time.perf_counter()
            try:
                matrix = self.encoder.embed(texts)
            except Exception as error:  # a bad batch must not kill the model thread
                log.exception("forward pass failed for %d texts", len(texts))
                for item in batch:
                    item.future.set_exception(error)
                continue
            offset = 0
            for item in batch:
                item.future.set_result(matrix[offset : offset + len(item.texts)])
                offset += len(item.texts)
            if self.on_batch:
                seconds = time.perf_counter() - started
                tokens = sum(item.tokens for item in batch)
                self.on_batch(BatchStats(len(texts), len(batch), tokens, seconds))
