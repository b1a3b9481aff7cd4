"""The service under load: sync requests, async jobs and single-text latency over HTTP."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import orjson
import requests

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


def _ok(response: requests.Response) -> requests.Response:
    if response.status_code == 429:
        raise RuntimeError(
            f"429 from {response.url}: the service's rate limit or sync slots are too low "
            f"for a benchmark ({response.text.strip()[:200]})"
        )
    response.raise_for_status()
    return response


def _post(session: requests.Session, url: str, texts: list[str]) -> requests.Response:
    payload = orjson.dumps({"input": texts})
    return _ok(session.post(url, data=payload, timeout=HTTP_TIMEOUT_S))


def embed(session: requests.Session, target: Target, texts: list[str]) -> list[list[float]]:
    """One sync request; fails unless every text got a vector computed for it."""
    response = _post(session, f"{target.url}/api/v1/embeddings", texts)
    if response.headers.get("X-Cache") == "hit":
        raise RuntimeError("answered from the cache despite Cache-Control: no-cache")
    rows = [item["embedding"] for item in orjson.loads(response.content)["data"]]
    if len(rows) != len(texts):
        raise RuntimeError(f"asked for {len(texts)} vectors, got {len(rows)}")
    return rows


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
    errors: list[BaseException] = []

    def client() -> None:
        try:
            _drain(target, work)
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return len(texts) / elapsed


def _await_job(session: requests.Session, target: Target, status_url: str, count: int) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    interval = POLL_FIRST_S
    while time.monotonic() < deadline:
        response = _ok(session.get(f"{target.url}{status_url}", timeout=HTTP_TIMEOUT_S))
        body = orjson.loads(response.content)
        if body["status"] == "succeeded":
            if len(body["result"]["data"]) != count:
                raise RuntimeError(f"job {body['id']}: {count} texts, other vector count")
            return
        if body["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {body['id']} {body['status']}: {body.get('error')}")
        time.sleep(interval)
        interval = min(2 * interval, POLL_MAX_S)
    raise TimeoutError(f"{status_url} not done in {JOB_TIMEOUT_S:g}s")


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
    """The lowest cosine between the service's vectors and unit-length reference rows."""
    with target.session() as session:
        served = np.array(embed(session, target, texts), dtype=np.float32)
    served /= np.linalg.norm(served, axis=1, keepdims=True)
    return float(np.min(np.sum(served * reference, axis=1)))


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
