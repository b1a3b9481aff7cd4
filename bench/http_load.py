"""HTTP to the service: the error check and job polling every suite uses, and foundation's
load (sync requests, async jobs, single-text latency)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import requests

import raw_encode
from report import Figures
from workload import CHUNK, Workload, chunks

HTTP_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 600.0
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.1
"""Job polling backs off from the first interval to the longest: prompt, yet no polls
that take the cores from the model while a long job runs."""

# Compute every text afresh (and store it, as a first sight would): no timed run, and no
# repeat, may be answered from the service's embedding cache.
HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Target:
    """The service: where it answers, and the API key to send, if any."""

    url: str
    api_key: str | None = None

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(HEADERS)
        if self.api_key:
            session.headers["Authorization"] = f"Bearer {self.api_key}"
        return session


def check(response: requests.Response) -> requests.Response:
    """The response, unless it is an error: then a RuntimeError that quotes it."""
    if response.status_code == 429:
        raise RuntimeError(
            f"429 from {response.url}: the service's rate limit or sync slots are too low "
            f"for a benchmark ({response.text.strip()[:200]})"
        )
    if response.status_code >= 400:
        raise RuntimeError(f"{response.status_code} from {response.url}: {response.text[:300]}")
    return response


def wait_succeeded(
    session: requests.Session,
    url: str,
    timeout_s: float = JOB_TIMEOUT_S,
    poll: tuple[float, float] = (POLL_FIRST_S, POLL_MAX_S),
) -> dict[str, Any]:
    """Poll a job's status `url` until it succeeds; its body. The interval starts at
    poll[0] and doubles up to poll[1]; a failed or cancelled job raises."""
    deadline = time.monotonic() + timeout_s
    interval, longest = poll
    while time.monotonic() < deadline:
        body: dict[str, Any] = orjson.loads(check(session.get(url, timeout=HTTP_TIMEOUT_S)).content)
        if body["status"] == "succeeded":
            return body
        if body["status"] in ("failed", "cancelled"):
            why = body.get("error") or body.get("failures")
            raise RuntimeError(f"job {body['id']} {body['status']}: {why}")
        time.sleep(interval)
        interval = min(2 * interval, longest)
    raise TimeoutError(f"{url} not done in {timeout_s:g}s")


def _post(session: requests.Session, url: str, texts: list[str]) -> requests.Response:
    payload = orjson.dumps({"input": texts})
    return check(session.post(url, data=payload, timeout=HTTP_TIMEOUT_S))


def embed(session: requests.Session, target: Target, texts: list[str]) -> list[list[float]]:
    """One sync request; fails unless every text got a vector computed for it."""
    response = _post(session, f"{target.url}/api/v1/embeddings", texts)
    if response.headers.get("X-Cache") == "hit":
        raise RuntimeError("answered from the cache despite Cache-Control: no-cache")
    rows = [item["embedding"] for item in orjson.loads(response.content)["data"]]
    if len(rows) != len(texts):
        raise RuntimeError(f"asked for {len(texts)} vectors, got {len(rows)}")
    return rows


def in_threads(count: int, work: Callable[[], None]) -> float:
    """`work()` in `count` threads released together; seconds until the last is done.
    The first error a thread met is raised here."""
    errors: list[BaseException] = []
    ready = threading.Barrier(count + 1)

    def run() -> None:
        ready.wait()
        try:
            work()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def _drain(target: Target, work: queue.SimpleQueue[list[str]]) -> None:
    with target.session() as session:
        while True:
            try:
                texts = work.get_nowait()
            except queue.Empty:
                return
            embed(session, target, texts)


def sync_throughput(target: Target, texts: list[str], clients: int) -> float:
    """texts/s with `clients` threads, each with its own session, taking chunks of 32."""
    work: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
    for part in chunks(texts):
        work.put(part)
    return len(texts) / in_threads(clients, lambda: _drain(target, work))


def _await_job(session: requests.Session, target: Target, status_url: str, count: int) -> None:
    body = wait_succeeded(session, f"{target.url}{status_url}")
    if len(body["result"]["data"]) != count:
        raise RuntimeError(f"job {body['id']}: {count} texts, other vector count")


def async_throughput(target: Target, texts: list[str]) -> float:
    """texts/s from the first submit to the last job seen succeeded (polled in order)."""
    parts = chunks(texts)
    with target.session() as session:
        started = time.perf_counter()
        jobs = [_post(session, f"{target.url}/api/v1/jobs", part) for part in parts]
        urls = [orjson.loads(job.content)["status_url"] for job in jobs]
        for url, part in zip(urls, parts, strict=True):
            _await_job(session, target, url, len(part))
        elapsed = time.perf_counter() - started
    return len(texts) / elapsed


def single_latencies(target: Target, texts: list[str]) -> list[float]:
    """Seconds per sequential one-text sync request."""
    out = []
    with target.session() as session:
        for text in texts:
            started = time.perf_counter()
            embed(session, target, [text])
            out.append(time.perf_counter() - started)
    return out


def min_cosine(target: Target, texts: list[str], reference: np.ndarray) -> float:
    """The lowest cosine between the service's vectors and the reference rows."""
    with target.session() as session:
        served = np.array(embed(session, target, texts), dtype=np.float32)
    return raw_encode.min_cosine(served, reference)


def warm_up(target: Target, texts: list[str]) -> None:
    """A few requests of each kind, so no timed run pays for first use."""
    sync_throughput(target, texts[: 3 * CHUNK], clients=1)
    async_throughput(target, texts[: 2 * CHUNK])
    single_latencies(target, texts[:10])


def measure_round(target: Target, work: Workload, figures: Figures) -> None:
    """Each service figure once."""
    texts = work.texts
    sync_1, sync_4 = "sync, 1 client", "sync, 4 clients"
    figures.measure("sync_1", sync_1, "texts/s", lambda: sync_throughput(target, texts, 1))
    figures.measure("sync_4", sync_4, "texts/s", lambda: sync_throughput(target, texts, 4))
    figures.measure(
        "async_1", "async jobs, 1 client", "texts/s", lambda: async_throughput(target, texts)
    )
    figures.latencies("sync", "sync single text", lambda: single_latencies(target, work.singles))
