"""Clients of the service for the suites that start one: no-store sync requests from
many threads, and a corpus as one async job (base64 answers)."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import numpy as np
import orjson
import requests

from http_load import check, in_threads, wait_succeeded
from local_stack import MODEL
from workload import CHUNK, chunks

MAX_INPUTS = 2048  # the API's default MAX_INPUTS: a job of more texts is split
HTTP_TIMEOUT_S = 300.0
JOB_TIMEOUT_S = 1800.0
POLL_S = 0.02
JSON = {"Content-Type": "application/json"}
NO_STORE = JSON | {"Cache-Control": "no-store"}


def _post_sync(session: requests.Session, url: str, texts: list[str]) -> float:
    """One no-store request; its seconds. Fails on a cache hit or a short answer."""
    payload = orjson.dumps({"model": MODEL, "input": texts})
    started = time.perf_counter()
    response = session.post(f"{url}/api/v1/embeddings", data=payload, timeout=HTTP_TIMEOUT_S)
    took = time.perf_counter() - started
    if check(response).headers.get("X-Cache") == "hit":
        raise RuntimeError("answered from the cache despite no-store")
    if len(orjson.loads(response.content)["data"]) != len(texts):
        raise RuntimeError("the vector count differs from the input count")
    return took


def run_clients(url: str, bodies: list[list[str]], clients: int) -> tuple[float, list[float]]:
    """Sync requests (no-store) from `clients` threads, each taking the next body until
    none is left; returns (seconds, per-request latencies)."""
    todo = list(reversed(bodies))
    lock = threading.Lock()
    latencies: list[float] = []

    def client() -> None:
        with requests.Session() as session:
            session.headers.update(NO_STORE)
            while True:
                with lock:
                    if not todo:
                        return
                    texts = todo.pop()
                took = _post_sync(session, url, texts)
                with lock:
                    latencies.append(took)

    return in_threads(clients, client), latencies


def decode_rows(data: list[dict[str, Any]]) -> np.ndarray:
    rows = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data]
    return np.stack(rows)


def async_job(url: str, texts: list[str]) -> tuple[float, np.ndarray]:
    """All texts as one job (several past MAX_INPUTS), base64 vectors, polled every 20 ms:
    seconds from the POST to the (last) job seen succeeded, and the vectors."""
    with requests.Session() as session:
        session.headers.update(NO_STORE)
        started = time.perf_counter()
        status_urls = []
        for part in chunks(texts, MAX_INPUTS):
            body = orjson.dumps({"model": MODEL, "input": part, "encoding_format": "base64"})
            answer = check(session.post(f"{url}/api/v1/jobs", data=body, timeout=HTTP_TIMEOUT_S))
            status_urls.append(orjson.loads(answer.content)["status_url"])
        found = []
        for status_url in status_urls:
            job = wait_succeeded(session, url + status_url, JOB_TIMEOUT_S, (POLL_S, POLL_S))
            found.append(decode_rows(job["result"]["data"]))
        elapsed = time.perf_counter() - started
    vectors = np.concatenate(found)
    if len(vectors) != len(texts):
        raise RuntimeError(f"{len(texts)} texts, {len(vectors)} vectors")
    return elapsed, vectors


def warm_up(url: str, texts: list[str]) -> None:
    """Requests of each kind, so no timed run pays for first use."""
    run_clients(url, [[t] for t in texts[:16]], 4)
    run_clients(url, chunks(texts[: 4 * CHUNK]), 2)
    async_job(url, texts[: 2 * CHUNK])
