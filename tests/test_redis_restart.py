"""Redis goes away with work queued and running, then comes back on the same port and data
directory (append-only file, as in docker-compose.yml): while it is down the API answers
503 JSON with Retry-After and /health says down; afterwards the API and the worker
reconnect by themselves and every job that was accepted completes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient

from api.app import create_app
from cli.redis_server import RedisServer
from common.settings import load_settings
from tests.conftest import start_worker, stop, wait_for_worker
from tests.helpers import wait_job
from workers.batcher import Batcher

VISIBILITY = "10"
"""Seconds before a message that a worker held when Redis went away is delivered again.
Only a message whose task failed against the missing Redis needs it (kombu's restore on
losing the connection cannot reach Redis either); every task here takes far less."""
DOWN_ANSWER_SECONDS = 15.0
"""A request while Redis is down fails within this (redis-py retries, then gives up)."""


def poll(client: FlaskClient, url: str) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def wait_until_done(client: FlaskClient, url: str, deadline: float) -> dict[str, Any]:
    return wait_job(lambda: poll(client, url), deadline - time.monotonic())


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["type"] == "service_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.timeout(240)
def test_accepted_work_survives_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persist=True).start()
    env = {"BROKER_VISIBILITY_TIMEOUT_SECONDS": VISIBILITY}
    log = tmp_path / "worker.log"
    worker = start_worker(server.url, log, name="restart", **env)
    try:
        wait_for_worker(server.url, worker, log, "restart")
        settings = load_settings(
            REDIS_URL=server.url, GPU_ENABLED=False, REQUEST_TIMEOUT_SECONDS=5,
            INDEX_BATCH_CHUNKS=16, RATE_LIMIT_REQUESTS_PER_MINUTE=1_000_000,
            RATE_LIMIT_BURST=1_000_000, AUTH_REQUIRED=False, **env,
        )  # fmt: skip
        client = create_app(settings).test_client()

        # Accepted work: async jobs and an index job, more than the worker does at once
        # (8 task threads), each task short.
        urls = []
        for i in range(12):
            texts = [f"job {i}, text {j}: the quick brown fox" for j in range(16)]
            accepted = client.post("/api/v1/jobs", json={"input": texts})
            assert accepted.status_code == 202, accepted.get_data(as_text=True)
            urls.append(accepted.get_json()["status_url"])
        docs = [{"id": f"doc{i}", "text": f"document {i} " + "lorem ipsum " * (1 + i % 20)}
                for i in range(160)]  # fmt: skip
        index = client.post("/api/v1/index-jobs", json={"documents": docs})
        assert index.status_code == 202, index.get_data(as_text=True)
        index_url = index.get_json()["status_url"]
        urls.append(index_url)

        # Stop Redis once the worker is on it: some jobs running, others still queued.
        deadline = time.monotonic() + 60
        while poll(client, urls[0])["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = {url: poll(client, url)["status"] for url in urls}
        assert "queued" in before.values() or "running" in before.values(), before
        server.stop()  # SIGTERM: redis-server writes out the append-only file and exits

        started = time.monotonic()
        assert_unavailable(client.post("/api/v1/jobs", json={"input": "while down"}))
        assert time.monotonic() - started < DOWN_ANSWER_SECONDS
        assert_unavailable(client.post("/api/v1/embeddings", json={"input": "while down"}))
        assert_unavailable(client.get(urls[-1]))
        health = client.get("/health")
        assert health.status_code == 503
        assert health.get_json()["status"] == "down"
        assert health.get_json()["redis"]["ok"] is False
        time.sleep(2)
        assert worker.poll() is None, "the worker died with Redis"

        server.start()  # the same port and directory: the AOF brings jobs and queues back
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the API did not reconnect"
            time.sleep(0.2)

        deadline = time.monotonic() + 90
        finished = {url: wait_until_done(client, url, deadline) for url in urls}
        assert {url: job["status"] for url, job in finished.items()} == dict.fromkeys(
            urls, "succeeded"
        ), before
        for url in urls[:-1]:
            rows = finished[url]["result"]["data"]
            assert len(rows) == 16 and all(len(r["embedding"]) == 384 for r in rows)
        progress = finished[index_url]
        assert progress["documents"] == {"total": 160, "done": 160, "failed": 0}
        assert progress["chunks"]["done"] == progress["chunks"]["total"]
        lines = client.get(progress["results_url"]).data.splitlines()
        assert len(lines) == progress["chunks"]["total"]

        # New work goes through as before, and the worker is seen again.
        again = client.post("/api/v1/embeddings", json={"input": ["after the restart"]})
        assert again.status_code == 200, again.get_data(as_text=True)
        deadline = time.monotonic() + 20
        while client.get("/health").get_json()["status"] != "ok":
            assert time.monotonic() < deadline, client.get("/health").get_json()
            time.sleep(0.5)
        assert worker.poll() is None
    finally:
        stop(worker)
        server.stop()


class _Encoder:
    name, dimensions, device, precision = "fake", 4, "cpu", "float32"

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), self.dimensions), dtype=np.float32)


def test_batch_figures_failing_never_stop_the_model_thread() -> None:
    """The restart above found this: the figures' Redis write (on_collection) raised in
    the model thread while Redis was down, the thread died, and every later task of the
    worker waited forever. Figures are best effort now."""

    def redis_down(_: object) -> None:
        raise redis.ConnectionError("Redis is away")

    batcher = Batcher(_Encoder(), batch_size=8, max_tokens=1000, wait_s=0, overhead_tokens=48,
                      on_pass=redis_down, on_collection=redis_down)  # fmt: skip
    for _ in range(3):
        assert batcher.submit(["a", "b"], [1, 1]).result(timeout=5).shape == (2, 4)
