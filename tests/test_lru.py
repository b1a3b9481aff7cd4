"""The in-process LRU under the API's cache tiers and token counts (common/lru.py)."""

from __future__ import annotations

import threading
import time

import pytest

from common.lru import LRU


def test_evicts_the_least_recently_used() -> None:
    lru: LRU[str, int] = LRU(3)
    lru.put_many([("a", 1), ("b", 2), ("c", 3)])
    assert lru.get_many(["a", "zz"]) == [1, None]  # a is now the newest
    lru.put("d", 4)
    assert len(lru) == 3
    assert lru.get_many(["a", "b", "c", "d"]) == [1, None, 3, 4]


def test_a_rewritten_key_becomes_the_newest() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put_many([("a", 1), ("b", 2), ("a", 10), ("c", 3)])
    assert lru.get_many(["a", "b", "c"]) == [10, None, 3]


def test_entries_expire_after_the_ttl() -> None:
    lru: LRU[str, str] = LRU(10, ttl_seconds=0.2)
    lru.put("k", "v")
    assert lru.get("k") == "v"
    time.sleep(0.3)
    assert lru.get("k") is None
    assert len(lru) == 0  # an expired entry found is dropped


def test_clear_and_size() -> None:
    lru: LRU[int, int] = LRU(5)
    lru.put_many((i, i) for i in range(10))
    assert len(lru) == 5
    lru.clear()
    assert len(lru) == 0 and lru.get(9) is None
    with pytest.raises(ValueError):
        LRU(0)


def test_threads_share_one_lru() -> None:
    lru: LRU[int, int] = LRU(100)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(2000):
                lru.put(offset + i % 150, i)
                lru.get_many([offset + (i * 7) % 150, i % 300])
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(lru) == 100
