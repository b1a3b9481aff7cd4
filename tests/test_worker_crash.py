"""SIGKILL a worker in the middle of an index job: the job still finishes, every chunk
present exactly once (acks_late + redelivery after the visibility timeout + idempotent,
overwrite-not-append batch results).

The victim is killed once a batch is stored, with batches in hand (INDEX_CONCURRENCY of
them, taken by its bulk lane's consumer) and the rest waiting in the lane. A kill inside
kombu's BRPOP-to-unacked moment would lose a message to the ledger instead (README,
"Nothing accepted is lost"); that moment is microseconds long."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from common import redis_keys
from common.settings import Settings, load_settings
from tests.conftest import models_file, start_worker, stop, wait_for_worker
from tests.helpers import wait_until

VISIBILITY = "4"


def poll_while(client: FlaskClient, url: str, status: str, timeout: float) -> dict[str, Any]:
    """The job's body once its status is no longer `status` (fails after `timeout` s)."""
    return wait_until(lambda: client.get(url).get_json(), lambda b: b["status"] != status,
                      timeout, 0.25)  # fmt: skip


def test_index_job_survives_a_killed_worker(settings: Settings, tmp_path: Path) -> None:
    models = models_file(tmp_path, name="crash", queue="crash")
    env = {"MODELS_FILE": str(models), "DEFAULT_MODEL": "crash",
           "BROKER_VISIBILITY_TIMEOUT_SECONDS": VISIBILITY}  # fmt: skip
    overrides = {**settings.model_dump(), **env, "INDEX_BATCH_CHUNKS": 64}  # 8 batches
    app: Flask = create_app(load_settings(**overrides))
    client = app.test_client()
    url = settings.REDIS_URL
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    victim = start_worker(url, first_log, queues="crash", name="victim", **env)
    try:
        wait_for_worker(url, victim, first_log, "victim")
        docs = [{"id": f"doc{i}", "text": f"passage {i} " + "lorem ipsum " * (i % 40)}
                for i in range(480)]  # fmt: skip
        job = client.post("/api/v1/index-jobs", json={"documents": docs}).get_json()
        broker = redis.Redis.from_url(url)
        deadline = time.monotonic() + 120
        while True:  # until a batch is stored and the victim holds all the others
            progress = client.get(job["status_url"]).get_json()
            if progress["chunks"]["done"] and not broker.llen("crash"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert progress["batches"] == 8
        os.kill(victim.pid, signal.SIGKILL)  # mid-job: some batches stored, some in flight
        victim.wait()
        assert progress["chunks"]["done"] < progress["chunks"]["total"]
        unacked = broker.hlen("unacked")
        assert unacked > 0  # messages the dead worker held: they must come back
    finally:
        stop(victim)
    survivor = start_worker(url, second_log, queues="crash", name="survivor", **env)
    try:
        progress = poll_while(client, job["status_url"], "running", timeout=180)
    finally:
        stop(survivor)
    assert progress["status"] == "succeeded"
    assert progress["chunks"]["done"] == progress["chunks"]["total"]
    assert progress["documents"] == {"total": 480, "done": 480, "failed": 0}
    lines = client.get(f"/api/v1/index-jobs/{job['id']}/results").data.splitlines()
    rows = [(r["id"], r["chunk"]) for r in map(orjson.loads, lines)]
    assert len(rows) == len(set(rows)) == progress["chunks"]["total"]
    assert {r[0] for r in rows} == {d["id"] for d in docs}
    stored = redis.Redis.from_url(url).hlen(redis_keys.index_job_part(job["id"], "vectors"))
    assert stored == progress["batches"]


def test_a_message_lost_before_its_task_started_fails_its_job(
    settings: Settings, tmp_path: Path, held_app: Flask
) -> None:
    """kombu's window: a worker's BRPOP took the message and the worker died before it
    recorded it as unacked. Played here by taking the messages of a job and of a waiting
    sync call off the queue by hand; a later job then starts on a live worker, and the
    sweep fails the lost ones with their reason: the sync call answers 503 worker_lost.
    A job still waiting in a queue (nothing after it started) is left alone."""
    models = models_file(tmp_path, name="lossy", queue="lossy")
    env = {"MODELS_FILE": str(models), "DEFAULT_MODEL": "lossy",
           "BROKER_VISIBILITY_TIMEOUT_SECONDS": "2"}  # fmt: skip
    app = create_app(load_settings(**{**settings.model_dump(), **env,
                                      "REQUEST_TIMEOUT_SECONDS": 240}))  # fmt: skip
    client = app.test_client()
    broker = redis.Redis.from_url(settings.REDIS_URL)
    waiting = held_app.test_client().post("/api/v1/jobs", json={"input": "in a queue"})
    lost = client.post("/api/v1/jobs", json={"input": "lost on the way"}).get_json()
    with ThreadPoolExecutor(1) as pool:
        sync = pool.submit(app.test_client().post, "/api/v1/embeddings",
                           json={"input": "waited for, lost"})  # fmt: skip
        deadline = time.monotonic() + 30
        while broker.llen("lossy") < 2:
            assert time.monotonic() < deadline and not sync.done()
            time.sleep(0.05)
        assert broker.rpop("lossy") and broker.rpop("lossy")  # the dying worker's BRPOPs
        log = tmp_path / "lossy.log"
        worker = start_worker(settings.REDIS_URL, log, queues="lossy", name="lossy", **env)
        try:
            wait_for_worker(settings.REDIS_URL, worker, log, "lossy")
            later = client.post("/api/v1/embeddings", json={"input": "sent later"})
            assert later.status_code == 200  # it started, so the lost ones were overtaken
            job = poll_while(client, lost["status_url"], "queued", timeout=60)
            answer = sync.result(timeout=60)
        finally:
            stop(worker)
    assert job["status"] == "failed"
    assert job["error"]["type"] == "worker_lost"
    assert "send it again" in job["error"]["message"]
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.get_json()["error"]["type"] == "worker_lost"
    assert answer.get_json()["error"]["job_id"].startswith("job_")
    still = held_app.test_client().get(waiting.get_json()["status_url"]).get_json()
    assert still["status"] == "queued"
