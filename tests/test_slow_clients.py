"""Slow and idle clients against the API under gunicorn, as deployed: 150 connections that
trickle a body one byte a second and 200 that send nothing, held for 20 s, while another
client's calls (each on a new connection) keep answering fast. Then the limits: idle
connections are closed after `keepalive` (5 s), trickled bodies answered 408 after
REQUEST_BODY_TIMEOUT_SECONDS (20 s)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from dataclasses import dataclass, field

import orjson
import pytest
import requests

from common.settings import load_settings

SLOW_BODIES = 150
IDLE = 200
HELD_SECONDS = 20.0
P99_LIMIT_SECONDS = 1.0
KEEPALIVE_SECONDS = 5.0
"""api/gunicorn_conf.py's keepalive: the time a connection has to send its headers."""

pytestmark = pytest.mark.timeout(180)

SLOW_HEAD = (
    b"POST /api/v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
)


@dataclass
class Attack:
    """What the hostile clients saw: connections open at most at once, and each one the
    server ended (trickling or idle, after how long, its answer)."""

    open_now: int = 0
    most_open: int = 0
    ended: list[tuple[bool, float, bytes]] = field(default_factory=list)


async def _hold(host: str, port: int, trickle: bool, until: float, attack: Attack) -> None:
    """One hostile client: connect, send the headers and then a byte a second (`trickle`)
    or nothing; once the server ends the connection, note how, and open another.

    One read stays pending the whole time, so an answer that arrives while a byte is being
    written is kept even when that write then meets the closed connection."""
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection(host, port)
        opened = time.monotonic()
        attack.open_now += 1
        attack.most_open = max(attack.most_open, attack.open_now)
        reading = asyncio.ensure_future(reader.read(65536))
        try:
            if trickle:
                writer.write(SLOW_HEAD)
            while time.monotonic() < until:
                if trickle:
                    with contextlib.suppress(ConnectionError):  # answered and closed: read it
                        writer.write(b" ")
                        await writer.drain()
                done, _ = await asyncio.wait({reading}, timeout=1.0)
                if not done:
                    continue
                try:
                    answer = reading.result()
                except ConnectionError:
                    answer = b""
                if answer:  # the rest of it, until the server closes
                    with contextlib.suppress(ConnectionError, TimeoutError):
                        answer += await asyncio.wait_for(reader.read(), 5.0)
                attack.ended.append((trickle, time.monotonic() - opened, answer))
                break
        finally:
            reading.cancel()
            attack.open_now -= 1
            writer.close()


def _attack(host: str, port: int, seconds: float, attack: Attack) -> None:
    async def run() -> None:
        until = time.monotonic() + seconds
        clients = [_hold(host, port, True, until, attack) for _ in range(SLOW_BODIES)]
        clients += [_hold(host, port, False, until, attack) for _ in range(IDLE)]
        await asyncio.gather(*clients)

    asyncio.run(run())


def _one_call(live_api: str, number: int) -> str | None:
    """/livez, then a text no one sent before (a worker embeds it): what went wrong, if."""
    try:
        live = requests.get(f"{live_api}/livez", timeout=5)
        text = f"a text that is not cached yet, number {number}"
        call = requests.post(f"{live_api}/api/v1/embeddings", json={"input": text}, timeout=5)
    except requests.RequestException as error:
        return repr(error)
    if live.status_code != 200 or call.status_code != 200:
        return f"{live.status_code} {call.status_code} {call.text[:200]}"
    return None


def test_slow_and_idle_clients_do_not_starve_others(live_api: str) -> None:
    host, port = live_api.removeprefix("http://").split(":")
    attack = Attack()
    # A little past the body timeout: every first trickling connection gets its answer.
    seconds = load_settings().REQUEST_BODY_TIMEOUT_SECONDS + 4
    attacker = threading.Thread(target=_attack, args=(host, int(port), seconds, attack))
    attacker.start()
    time.sleep(2)  # every hostile connection open first
    latencies, failures = [], []
    try:
        while attacker.is_alive() and len(latencies) < 5000:
            started = time.monotonic()
            if failure := _one_call(live_api, len(latencies)):
                failures.append(failure)
            latencies.append(time.monotonic() - started)
    finally:
        attacker.join()
    p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
    print(f"\n{len(latencies)} calls (/livez + one new text) beside {attack.most_open} hostile "
          f"connections: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms, {len(failures)} failed")  # fmt: skip
    assert attack.most_open >= SLOW_BODIES + IDLE - 10, attack.most_open  # it took place
    assert not failures, failures[:5]
    assert len(latencies) >= 20
    assert p99 < P99_LIMIT_SECONDS, f"p99 {p99:.2f}s"

    idle = [held for trickle, held, _ in attack.ended if not trickle]
    assert len(idle) >= IDLE  # closed by the server, each after `keepalive`
    assert min(idle) > KEEPALIVE_SECONDS - 1 and max(idle) < KEEPALIVE_SECONDS + 3, idle
    slow = [(held, answer) for trickle, held, answer in attack.ended if trickle]
    assert len(slow) >= SLOW_BODIES
    for held, answer in slow:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert orjson.loads(body)["error"]["type"] == "request_timeout"
        assert HELD_SECONDS - 1 < held < HELD_SECONDS + 4  # 20 s, plus 1 s per 500 bytes
