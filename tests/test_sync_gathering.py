"""Concurrent sync calls in one API process share one task (api/sync_calls.py): fewer
jobs than calls, each call with its own vectors, and each member of a shared job a job of
its own to poll and to cancel."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from flask import Flask

from api.app import create_app
from common import redis_keys
from common.settings import Settings, load_settings
from tests.conftest import held_settings

CALLS = 6


def concurrent_calls(app: Flask, bodies: list[dict], headers: dict[str, str]) -> list:
    """POST each body from its own thread, all at once; the answers in body order. The
    first call goes out alone (nobody else is busy yet); the rest gather behind it."""
    answers: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def call(i: int) -> None:
        client = app.test_client()
        start.wait()
        answers[i] = client.post("/api/v1/embeddings", json=bodies[i], headers=headers)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def created_jobs(app: Flask) -> int:
    svc = app.extensions["embeddings"]
    return int(svc.redis.hget(redis_keys.JOB_STATS, "created") or 0)


def test_concurrent_calls_share_tasks_and_keep_their_own_vectors(
    settings: Settings, worker: None
) -> None:
    app = create_app(load_settings(**{**settings.model_dump(), "SYNC_GATHER_MS": 300}))
    bodies = [{"input": [f"gathered call {i}", f"its second text {i}"]} for i in range(CALLS)]
    before = created_jobs(app)
    answers = concurrent_calls(app, bodies, {"Cache-Control": "no-store"})
    assert [a.status_code for a in answers] == [200] * CALLS
    assert created_jobs(app) - before < CALLS  # some calls shared a job
    alone = app.test_client()
    for body, answer in zip(bodies, answers, strict=True):
        mine = np.array([row["embedding"] for row in answer.get_json()["data"]])
        again = alone.post("/api/v1/embeddings", json=body, headers={"Cache-Control": "no-store"})
        expected = np.array([row["embedding"] for row in again.get_json()["data"]])
        np.testing.assert_allclose(mine, expected, atol=1e-5)
        assert (
            answer.get_json()["usage"]["prompt_tokens"]
            == again.get_json()["usage"]["prompt_tokens"]
        )


def test_members_of_a_shared_job_poll_and_cancel_alone(settings: Settings, tmp_path: Path) -> None:
    """On a queue no worker consumes, gathered calls time out (504) with their members'
    ids: each polls as its own job, and the shared job is cancelled with its last member."""
    app = create_app(held_settings(settings, tmp_path, SYNC_GATHER_MS=300))
    bodies = [{"input": ["x"] * (i + 1)} for i in range(3)]
    answers = concurrent_calls(app, bodies, {"X-Request-Timeout": "1.5"})
    assert [a.status_code for a in answers] == [504] * 3
    ids = [a.get_json()["error"]["job_id"] for a in answers]
    members = [i for i in ids if "." in i]
    assert len(members) >= 2 and len({i.split(".")[0] for i in members}) == 1, ids
    client = app.test_client()
    for job_id, body in zip(ids, bodies, strict=True):
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        assert (job["id"], job["status"], job["count"]) == (job_id, "queued", len(body["input"]))
    assert client.get(f"/api/v1/jobs/{members[0].split('.')[0]}.9").status_code == 404
    *others, last = members
    for member in others:
        assert client.delete(f"/api/v1/jobs/{member}").get_json()["status"] == "cancelled"
    shared = members[0].split(".")[0]
    svc = app.extensions["embeddings"]
    assert svc.jobs.get(shared).status == "queued"  # the last member still waits for it
    assert client.delete(f"/api/v1/jobs/{last}").get_json()["status"] == "cancelled"
    assert svc.jobs.get(shared).status == "cancelled"
