"""Cross-request batching and deduplication: the planner, the batcher, the real worker."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
from sentence_transformers import SentenceTransformer

from api.app import create_app
from common import redis_keys
from common.registry import load_registry
from common.settings import Settings, load_settings
from tests.conftest import MODEL
from tests.helpers import wait_until
from workers.batcher import Batcher, PassStats, plan_passes


def padded(lengths: list[int], passes: list[list[int]]) -> int:
    return sum(max(lengths[i] for i in p) * len(p) for p in passes)


def test_passes_are_length_sorted_and_bounded() -> None:
    lengths = [5, 50, 7, 48, 6, 49, 200]
    passes = plan_passes(lengths, batch_size=3, max_tokens=160, overhead_tokens=32)
    assert sorted(i for p in passes for i in p) == list(range(7))
    assert passes[0] == [6]  # 200 tokens alone: two of them would pass the budget
    assert passes[1] == [1, 5, 3]  # the 50s together, not with the 5s
    assert all(len(p) <= 3 for p in passes)
    assert all(max(lengths[i] for i in p) * len(p) <= 160 for p in passes[1:])


def test_one_long_text_does_not_pad_a_pass_of_short_ones() -> None:
    lengths = [256] + [20] * 31 + [18] * 32
    cheap = plan_passes(lengths, batch_size=32, max_tokens=16_384, overhead_tokens=32)
    assert cheap[0] == [0]  # alone, not padding 31 texts of 20 tokens to 256
    assert padded(lengths, cheap) < 1.1 * sum(lengths)
    full = plan_passes(lengths, batch_size=32, max_tokens=16_384, overhead_tokens=100_000)
    assert [len(p) for p in full] == [32, 32]  # launch-bound: full passes
    assert padded(lengths, full) > 4 * sum(lengths)


class CountingEncoder:
    """A stand-in model (for the batcher alone): row = [len(text), pass number]."""

    name, dimensions, device, precision = "counting", 2, "cpu", "float32"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.busy = threading.Event()
        self.gate = threading.Event()

    def embed(self, texts: list[str]) -> np.ndarray:
        self.busy.set()
        self.gate.wait(5)
        self.calls.append(texts)
        return np.array([[len(t), len(self.calls)] for t in texts], dtype=np.float32)


def test_batcher_merges_requests_dedups_and_returns_each_its_rows() -> None:
    encoder = CountingEncoder()
    passes: list[PassStats] = []
    # A pass costs the stand-in the same whatever its texts: one pass for all that waits.
    batcher = Batcher(
        encoder, 64, 10_000, wait_s=0.05, overhead_tokens=10_000, on_pass=passes.append
    )
    first = batcher.submit(["warm"], [1])
    assert encoder.busy.wait(5)  # the model is busy with "warm" while the rest queue up
    requests = [["a" * (i + 1), "same", "b" * (i + 2)] for i in range(10)]
    futures = [batcher.submit(texts, [len(t) for t in texts]) for texts in requests]
    encoder.gate.set()
    first.result(5)
    for texts, future in zip(requests, futures, strict=True):
        rows = future.result(5)
        assert rows[:, 0].tolist() == [len(t) for t in texts]
    assert len(encoder.calls) == 2  # the warm-up pass, then one pass for ten requests
    assert encoder.calls[1].count("same") == 1
    assert passes[1].texts == 21  # 10 + 10 distinct + "same" once


def test_a_lone_caller_does_not_wait_for_company() -> None:
    """wait_s is for collections after one that had company; a caller alone goes at once."""
    encoder = CountingEncoder()
    encoder.gate.set()
    batcher = Batcher(encoder, 64, 10_000, wait_s=30.0, overhead_tokens=48)
    for text in ("one", "after", "another"):
        started = time.monotonic()
        batcher.submit([text], [1]).result(10)
        assert time.monotonic() - started < 5
    assert encoder.calls == [["one"], ["after"], ["another"]]


@pytest.mark.parametrize("streams", [1, 2])
def test_a_failing_pass_fails_its_requests_and_the_batcher_goes_on(streams: int) -> None:
    class Flaky(CountingEncoder):
        def embed(self, texts: list[str]) -> np.ndarray:
            if "boom" in texts:
                raise RuntimeError("model error")
            return super().embed(texts)

    encoder = Flaky()
    encoder.gate.set()
    batcher = Batcher(encoder, batch_size=8, max_tokens=100, wait_s=0, overhead_tokens=48,
                      streams=streams)  # fmt: skip
    with pytest.raises(RuntimeError):
        batcher.submit(["boom"], [1]).result(5)
    assert batcher.submit(["fine"], [1]).result(5).shape == (1, 2)


def test_interactive_work_goes_first_and_bulk_runs_in_passes_of_one_piece() -> None:
    """Bulk work (index batches) is cut into pieces of at most batch_size texts; a
    collection takes interactive work first and at most one pass of bulk, so a sync call
    waits for at most the pass that is running, and bulk tasks finish one after another."""
    encoder = CountingEncoder()
    batcher = Batcher(encoder, batch_size=4, max_tokens=1000, wait_s=0, overhead_tokens=48)
    first_bulk = batcher.submit([f"a{i}" for i in range(10)], [2] * 10, bulk=True)
    assert encoder.busy.wait(5)  # the first bulk pass runs; the rest of the work queues up
    second_bulk = batcher.submit([f"b{i}" for i in range(8)], [2] * 8, bulk=True)
    interactive = batcher.submit(["now"], [1])
    encoder.gate.set()
    rows = first_bulk.result(5)
    assert rows[:, 0].tolist() == [2] * 10  # its pieces' rows, joined in order
    interactive.result(5)
    second_bulk.result(5)
    assert encoder.calls[0] == ["a0", "a1", "a2", "a3"]  # one piece: one pass
    assert encoder.calls[1] == ["now"]  # ahead of the bulk that waited longer
    assert encoder.calls[2] == ["a4", "a5", "a6", "a7"]  # then bulk, which waited once
    assert all(len(texts) <= 4 for texts in encoder.calls)
    a_done = max(i for i, texts in enumerate(encoder.calls) if texts[0].startswith("a"))
    b_first = min(i for i, texts in enumerate(encoder.calls) if texts[0].startswith("b"))
    assert a_done < b_first  # first in, first out: the first task's slot frees first


def test_bulk_passes_stay_within_their_token_budget() -> None:
    encoder = CountingEncoder()
    encoder.gate.set()
    batcher = Batcher(encoder, batch_size=32, max_tokens=10_000, wait_s=0, overhead_tokens=48,
                      bulk_tokens=10)  # fmt: skip
    texts = ["aaaa", "bbbb", "cccc", "dddd", "e" * 20]
    rows = batcher.submit(texts, [4, 4, 4, 4, 20], bulk=True).result(5)
    assert rows[:, 0].tolist() == [4, 4, 4, 4, 20]
    assert [len(call) for call in encoder.calls] == [2, 2, 1]  # 2 x 4 <= 10 < 3 x 4
    batcher.submit(["f" * 20, "g"], [20, 1], bulk=True).result(5)
    assert encoder.calls[-2:] == [["f" * 20], ["g"]]  # over the budget alone: its own pass


class PairedEncoder:
    """A stand-in model whose passes each wait (up to 2 s) for a second pass running beside
    it: a pass alone fails."""

    name, dimensions, device, precision = "paired", 1, "cpu", "float32"

    def __init__(self) -> None:
        self.pair = threading.Barrier(2, timeout=2)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.pair.wait()
        return np.array([[len(t)] for t in texts], dtype=np.float32)


@pytest.mark.parametrize("streams", [1, 2])
def test_streams_run_passes_side_by_side(streams: int) -> None:
    """With two streams, a collection's two passes run at once, and so do two collections
    (the second collected while the first runs); with one, every pass runs alone."""
    batcher = Batcher(PairedEncoder(), batch_size=8, max_tokens=1000, wait_s=0,
                      overhead_tokens=0, streams=streams)  # fmt: skip
    one_request = batcher.submit(["a" * 90, "b"], [90, 1])  # two passes: 90 and 1 tokens
    two_requests = [batcher.submit([text], [1]) for text in ("c", "d")]
    futures = [one_request, *two_requests]
    if streams == 1:
        for future in futures:
            with pytest.raises(threading.BrokenBarrierError):
                future.result(10)
        return
    assert one_request.result(10)[:, 0].tolist() == [90, 1]
    assert [f.result(10)[0, 0] for f in two_requests] == [1, 1]


@pytest.fixture(scope="module")
def reference(settings: Settings) -> SentenceTransformer:
    path = load_registry(settings).get(MODEL).local_path()
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def test_concurrent_requests_share_forward_passes(
    worker: None, settings: Settings, reference: SentenceTransformer
) -> None:
    """The worker's batcher merges tasks: each call its own task here (the API's gathering
    of concurrent calls, api/sync_calls.py, is off), fewer forward passes than tasks."""
    app = create_app(load_settings(**{**settings.model_dump(), "SYNC_GATHER_MS": 0}))
    client = redis.Redis.from_url(settings.REDIS_URL)
    stats_key = redis_keys.batch_stats(MODEL)
    before = {k.decode(): float(v) for k, v in client.hgetall(stats_key).items()}
    texts = [f"concurrent request {i} {uuid.uuid4().hex}" for i in range(24)]

    def one(text: str) -> list[float]:
        response = app.test_client().post(
            "/api/v1/embeddings", json={"input": [text, "shared text"]},
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip
        assert response.status_code == 200
        return response.get_json()["data"][0]["embedding"]

    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(one, texts))
    after = wait_until(  # the worker writes its figures within 0.1 s
        lambda: {k.decode(): float(v) for k, v in client.hgetall(stats_key).items()},
        lambda now: now.get("requests", 0) - before.get("requests", 0) >= len(texts),
        timeout=10,
    )
    passes = after["passes"] - before.get("passes", 0)
    requests = after["requests"] - before.get("requests", 0)
    distinct = after["distinct_texts"] - before.get("distinct_texts", 0)
    assert requests == len(texts)
    assert passes < len(texts)
    assert distinct < 2 * len(texts)  # "shared text" embedded fewer times than asked
    expected = reference.encode(texts)
    for got, want in zip(answers, expected, strict=True):
        assert float(np.dot(got, want)) > 0.9999
