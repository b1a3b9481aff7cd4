"""Cross-request batching: many small requests for one model become few forward passes.

Task threads submit their texts with token counts and wait on a future. A model thread
takes whatever is queued when it is free (waiting at most `wait_s` after the first item
for more, while the last collection had company: a lone caller does not wait), up to a
token budget; embeds each distinct text once; sorts the texts by
length and cuts them into the passes of least padded cost (`plan_passes`), of at most
`batch_size` texts and `max_tokens` padded tokens each; then gives each submitter its own
rows in its own order. While the model is busy new requests pile up, so batches grow with
load and an idle model adds no wait beyond `wait_s`.

With `streams` > 1, as many passes run at once, each on its share of the CPU threads
(workers/runtime.py): a collection's passes side by side, and, while one collection runs,
the next is collected by another model thread. Small passes leave a pool of CPU threads
mostly idle; one thread per pass does not.

Two lanes: interactive work (sync calls, jobs) is always taken first. Bulk work (index
batches) is cut into pieces of at most `batch_size` texts and `bulk_tokens` padded tokens,
one short pass each, and a collection takes at most one piece, oldest first: alone, or,
when bulk waited through the collection before, with interactive work (so bulk keeps at
least every other collection). A pass already running is never interrupted, so what a
sync call may wait behind is one short bulk pass.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.providers.base import Encoder

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    texts: list[str]
    tokens: list[int]
    future: Future[np.ndarray] = field(default_factory=Future)


@dataclass(frozen=True)
class PassStats:
    """One forward pass: what the model actually ran."""

    texts: int
    tokens: int
    padded_tokens: int
    seconds: float


@dataclass(frozen=True)
class CollectionStats:
    """One collection: the requests merged and the texts deduplicated."""

    requests: int
    texts: int
    distinct: int


def plan_passes(
    lengths: list[int], batch_size: int, max_tokens: int, overhead_tokens: int
) -> list[list[int]]:
    """Indices grouped into passes, longest first, at the least padded cost.

    A pass of n texts padded to its longest, L tokens, costs about `overhead_tokens + n * L`
    token-steps (the fixed cost of one call, then the padded matrix). Over the texts sorted
    by length, a dynamic program picks the cut points with the least total cost under the
    limits of `batch_size` texts and `max_tokens` padded tokens a pass: one long text no
    longer pads a whole pass of short ones. With `overhead_tokens=0` every distinct length
    would run alone; a large one (launch-bound GPUs) keeps passes full.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    size = len(order)
    best = [0.0] + [float("inf")] * size  # best[j]: least cost of the first j sorted texts
    cut = [0] * (size + 1)  # the pass that ends at j starts at cut[j]
    for start in range(size):
        longest = lengths[order[start]]
        most = min(batch_size, max(1, max_tokens // max(longest, 1)))
        for end in range(start + 1, min(start + most, size) + 1):
            cost = best[start] + overhead_tokens + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    passes: list[list[int]] = []
    end = size
    while end:
        passes.append(order[cut[end] : end])
        end = cut[end]
    return passes[::-1]


def _joined(parts: list[Future[np.ndarray]]) -> Future[np.ndarray]:
    """One future for the rows of several, in order; the first error wins."""
    if len(parts) == 1:
        return parts[0]
    joined: Future[np.ndarray] = Future()
    left = [len(parts)]
    lock = threading.Lock()

    def done(_: Future[np.ndarray]) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        errors = [p.exception() for p in parts if p.exception() is not None]
        if errors:
            joined.set_exception(errors[0])  # type: ignore[arg-type]
        else:
            joined.set_result(np.concatenate([p.result() for p in parts]))

    for part in parts:
        part.add_done_callback(done)
    return joined


def _record(hook: Callable[[Any], None], stats: PassStats | CollectionStats) -> None:
    """Figures are best effort: a failing hook (Redis away) must neither fail the batch
    nor, outside its try, kill the model thread and leave every later task waiting."""
    try:
        hook(stats)
    except Exception as error:
        log.warning("batch figures not recorded: %s: %s", type(error).__name__, error)


class Batcher:
    def __init__(
        self,
        encoder: Encoder,
        batch_size: int,
        max_tokens: int,
        wait_s: float,
        overhead_tokens: int,
        bulk_tokens: int | None = None,
        on_pass: Callable[[PassStats], None] = lambda _: None,
        on_collection: Callable[[CollectionStats], None] = lambda _: None,
        streams: int = 1,
    ) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.wait_s = wait_s
        self.overhead_tokens = overhead_tokens
        self.bulk_tokens = bulk_tokens or max_tokens
        self.on_pass = on_pass
        self.on_collection = on_collection
        self.streams = streams
        self._interactive: deque[_Pending] = deque()
        self._bulk: deque[_Pending] = deque()
        self._ready = threading.Condition()
        self._bulk_waited = False
        self._company = False
        """Whether the last collection held more than one item: then the next waits."""
        self._passes = (
            ThreadPoolExecutor(streams, thread_name_prefix=f"pass-{encoder.name}")
            if streams > 1
            else None
        )
        for stream in range(streams):
            name = f"batcher-{encoder.name}-{stream}"
            threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, texts: list[str], tokens: list[int], bulk: bool = False) -> Future[np.ndarray]:
        """Rows for `texts` (float32, not normalized) once the model has run them."""
        if not bulk:
            pending = _Pending(texts, tokens)
            self._put(self._interactive, [pending])
            return pending.future
        pieces = [_Pending(texts[i:j], tokens[i:j]) for i, j in self._pieces(tokens)]
        self._put(self._bulk, pieces)
        return _joined([piece.future for piece in pieces])

    def _pieces(self, tokens: list[int]) -> list[tuple[int, int]]:
        """Consecutive spans of at most `batch_size` texts and `bulk_tokens` padded tokens
        (one text at least)."""
        spans, start, longest = [], 0, 0
        for i, n in enumerate(tokens):
            longest = max(longest, n)
            count = i - start + 1
            if count > 1 and (count > self.batch_size or longest * count > self.bulk_tokens):
                spans.append((start, i))
                start, longest = i, n
        spans.append((start, len(tokens)))
        return spans

    def _put(self, lane: deque[_Pending], items: list[_Pending]) -> None:
        with self._ready:
            lane.extend(items)
            self._ready.notify()

    def _collect(self) -> list[_Pending]:
        """Interactive items up to the token budget (waiting `wait_s` for more); the oldest
        bulk piece alone, or with them when bulk waited through the last collection."""
        batch: list[_Pending] = []
        tokens = 0
        with self._ready:
            while not self._interactive and not self._bulk:
                self._ready.wait()
            deadline = time.monotonic() + (self.wait_s if self._company else 0.0)
            while tokens < self.max_tokens:
                if self._interactive:
                    item = self._interactive.popleft()
                    batch.append(item)
                    tokens += sum(item.tokens)
                    continue
                left = deadline - time.monotonic()  # no wait while bulk work is queued
                if self._bulk or left <= 0 or not self._ready.wait(left):
                    break
            take = bool(self._bulk) and (not batch or self._bulk_waited)
            self._bulk_waited = bool(self._bulk) and not take
            if take:
                batch.append(self._bulk.popleft())
            self._company = len(batch) > 1
        return batch

    def _embed_distinct(self, texts: list[str], lengths: list[int]) -> np.ndarray:
        rows: list[np.ndarray] = [np.empty(0)] * len(texts)
        passes = plan_passes(lengths, self.batch_size, self.max_tokens, self.overhead_tokens)
        run = functools.partial(self._pass, texts, lengths)
        results = self._passes.map(run, passes) if self._passes else map(run, passes)
        for indices, matrix in zip(passes, results, strict=True):
            for i, row in zip(indices, matrix, strict=True):
                rows[i] = row
        return np.stack(rows)

    def _pass(self, texts: list[str], lengths: list[int], indices: list[int]) -> np.ndarray:
        started = time.perf_counter()
        matrix = self.encoder.embed([texts[i] for i in indices])
        seconds = time.perf_counter() - started
        padded = max(lengths[i] for i in indices) * len(indices)
        tokens = sum(lengths[i] for i in indices)
        _record(self.on_pass, PassStats(len(indices), tokens, padded, seconds))
        return matrix

    def _run(self) -> None:
        while True:
            batch = self._collect()
            position: dict[str, int] = {}
            distinct: list[str] = []
            lengths: list[int] = []
            for item in batch:
                for text, length in zip(item.texts, item.tokens, strict=True):
                    if text not in position:
                        position[text] = len(distinct)
                        distinct.append(text)
                        lengths.append(length)
            total = sum(len(item.texts) for item in batch)
            _record(self.on_collection, CollectionStats(len(batch), total, len(distinct)))
            try:
                matrix = self._embed_distinct(distinct, lengths)
            except Exception as error:  # a bad batch must not kill the model thread
                log.exception("forward pass failed for %d texts", len(distinct))
                for item in batch:
                    item.future.set_exception(error)
                continue
            for item in batch:
                item.future.set_result(matrix[[position[text] for text in item.texts]])
