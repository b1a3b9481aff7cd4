"""api/gathering.py: concurrent calls with one key become one send, each call keeps its
own outcome, a lone call never waits for company, and a group goes as soon as the send in
flight before it lands."""

from __future__ import annotations

import threading
import time

import pytest

from api.gathering import Gatherer, Ticket

WINDOW_S = 0.2
BLOCKER = 100


class Recorder:
    """send/collect of a Gatherer: records each send; results are the items doubled."""

    def __init__(self, fail_send: bool = False, fail_collect: bool = False) -> None:
        self.sends: list[list[int]] = []
        self.fail_send, self.fail_collect = fail_send, fail_collect
        self.release = threading.Event()

    def send(self, items: list[int]) -> tuple[list[str], list[int]]:
        self.sends.append(items)
        if self.fail_send and items != [BLOCKER]:
            raise ConnectionError("redis away")
        return [f"id-{i}" for i in items], items

    def collect(self, items: list[int]) -> list[int]:
        if items == [BLOCKER]:  # a call in flight for the whole test
            self.release.wait(10)
        elif self.fail_collect:
            raise TimeoutError("lost")
        return [2 * i for i in items]


def call(gatherer: Gatherer[int, list[int], int], key: str, item: int, size: int = 1) -> int:
    ticket: Ticket[int, int] = gatherer.submit(key, item, size)
    assert ticket.done.wait(20)
    if ticket.error:
        raise ticket.error
    assert ticket.result is not None
    return ticket.result


def concurrently(
    gatherer: Gatherer[int, list[int], int], rec: Recorder, items: list[int], keys: str = "k"
) -> dict[int, object]:
    """Call with each item from its own thread (key: keys[item % len(keys)]) while a first
    call of each key is still in flight; the outcomes (result or exception) by item."""
    outcomes: dict[int, object] = {}

    def run(item: int, key: str) -> None:
        try:
            outcomes[item] = call(gatherer, key, item)
        except Exception as error:
            outcomes[item] = error

    blockers = [threading.Thread(target=run, args=(BLOCKER, key)) for key in keys]
    threads = [threading.Thread(target=run, args=(i, keys[i % len(keys)])) for i in items]
    for thread in [*blockers, *threads]:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(10)
    rec.release.set()
    for thread in blockers:
        thread.join(10)
    assert outcomes.pop(BLOCKER) == 2 * BLOCKER
    rec.sends = [sent for sent in rec.sends if sent != [BLOCKER]]
    return outcomes


def test_a_lone_call_goes_at_once() -> None:
    rec = Recorder()
    gatherer = Gatherer(rec.send, rec.collect, window_s=5.0, max_size=100)
    started = time.monotonic()
    assert call(gatherer, "k", 3) == 6
    assert time.monotonic() - started < 1
    assert rec.sends == [[3]]


def test_concurrent_calls_share_one_send_and_keep_their_own_results() -> None:
    rec = Recorder()
    gatherer = Gatherer(rec.send, rec.collect, window_s=WINDOW_S, max_size=100)
    outcomes = concurrently(gatherer, rec, [1, 2, 3, 4])
    assert outcomes == {1: 2, 2: 4, 3: 6, 4: 8}
    assert rec.sends == [[1, 2, 3, 4]]


def test_other_keys_are_never_mixed() -> None:
    rec = Recorder()
    gatherer = Gatherer(rec.send, rec.collect, window_s=WINDOW_S, max_size=100)
    outcomes = concurrently(gatherer, rec, [0, 1, 2, 3], keys="ab")
    assert outcomes == {0: 0, 1: 2, 2: 4, 3: 6}
    assert sorted(map(sorted, rec.sends)) == [[0, 2], [1, 3]]


def test_a_full_group_goes_before_its_window_ends() -> None:
    rec = Recorder()
    gatherer = Gatherer(rec.send, rec.collect, window_s=30.0, max_size=2)
    started = time.monotonic()
    outcomes = concurrently(gatherer, rec, [1, 2])
    assert time.monotonic() - started < 10
    assert outcomes == {1: 2, 2: 4}
    assert rec.sends == [[1, 2]]


@pytest.mark.parametrize("where", ["send", "collect"])
def test_a_failure_reaches_every_call_of_the_group(where: str) -> None:
    rec = Recorder(fail_send=where == "send", fail_collect=where == "collect")
    gatherer = Gatherer(rec.send, rec.collect, window_s=WINDOW_S, max_size=100)
    outcomes = concurrently(gatherer, rec, [1, 2, 3])
    expected = ConnectionError if where == "send" else TimeoutError
    assert all(isinstance(outcomes[i], expected) for i in (1, 2, 3)), outcomes
    assert len(rec.sends) == 1


def test_a_group_goes_when_the_send_before_it_lands() -> None:
    """The window is only the longest wait: the gathered calls go once the blocker's send
    is collected, long before 30 s."""
    rec = Recorder()
    gatherer = Gatherer(rec.send, rec.collect, window_s=30.0, max_size=100)
    blocker = threading.Thread(target=call, args=(gatherer, "k", BLOCKER))
    blocker.start()
    time.sleep(0.05)
    outcomes: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: outcomes.__setitem__(i, call(gatherer, "k", i)))
        for i in (1, 2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    assert rec.sends == [[BLOCKER]]  # 1 and 2 wait: the blocker is still in flight
    started = time.monotonic()
    rec.release.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    assert time.monotonic() - started < 5
    assert outcomes == {1: 2, 2: 4}
    assert rec.sends == [[BLOCKER], [1, 2]]
