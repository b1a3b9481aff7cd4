"""Async jobs: submit, poll, result, cancel; state in Redis with a TTL."""

from __future__ import annotations

from pathlib import Path

import redis
from flask import Flask
from flask.testing import FlaskClient

from common import redis_keys
from common.queueing import EMBED_TASK, make_celery
from common.schemas import EmbedOptions, EmbedTask
from common.settings import Settings
from tests.conftest import wait_logged
from tests.helpers import wait_job


def poll(client: FlaskClient, url: str, timeout: float = 60) -> dict:
    return wait_job(lambda: client.get(url).get_json(), timeout, 0.1)


def test_submit_poll_and_result(client: FlaskClient, settings: Settings) -> None:
    response = client.post(
        "/api/v1/jobs", json={"input": ["one", "two"], "encoding_format": "base64"}
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["id"].startswith("job_") and len(body["id"]) >= 24
    assert response.headers["Location"] == body["status_url"] == f"/api/v1/jobs/{body['id']}"
    job = poll(client, body["status_url"])
    assert job["status"] == "succeeded"
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    result = job["result"]
    assert [item["index"] for item in result["data"]] == [0, 1]
    assert isinstance(result["data"][0]["embedding"], str)  # base64, as asked at submission
    assert result["usage"]["prompt_tokens"] > 0
    ttl = redis.Redis.from_url(settings.REDIS_URL).ttl(redis_keys.job(body["id"]))
    assert 0 < ttl <= settings.JOB_TTL_SECONDS


def test_job_ids_are_unique_and_unguessable(client: FlaskClient) -> None:
    ids = {client.post("/api/v1/jobs", json={"input": "x"}).get_json()["id"] for _ in range(20)}
    assert len(ids) == 20
    assert len({i[:10] for i in ids}) == 20


def test_cancel_a_queued_job_and_the_worker_skips_it(
    held_app: Flask, settings: Settings, worker: None, worker_log: Path
) -> None:
    client = held_app.test_client()
    job_id = client.post("/api/v1/jobs", json={"input": "never embedded"}).get_json()["id"]
    assert client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "queued"
    cancelled = client.delete(f"/api/v1/jobs/{job_id}")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    assert cancelled.get_json()["finished_at"]
    # The message reaches a worker late: the worker must leave the job cancelled.
    late = EmbedTask(
        job_id=job_id, model="all-MiniLM-L6-v2", texts=["x"], tokens=[3], options=EmbedOptions()
    )
    make_celery(settings).send_task(EMBED_TASK, args=[late.model_dump()], queue="cpu")
    wait_logged(worker_log, f"job {job_id} is finished, cancelled or expired: skipped")
    job = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "cancelled"
    assert "result" not in job


def test_cancelling_a_finished_job_changes_nothing(client: FlaskClient) -> None:
    url = client.post("/api/v1/jobs", json={"input": "done soon"}).get_json()["status_url"]
    assert poll(client, url)["status"] == "succeeded"
    after = client.delete(url).get_json()
    assert after["status"] == "succeeded"
    assert len(after["result"]["data"]) == 1


def test_list_jobs_newest_first_in_pages_without_their_vectors(client: FlaskClient) -> None:
    """GET /api/v1/jobs: the caller's async jobs, newest first, a page at a time; a done
    job's vectors stay on its own URL, and sync calls are not listed."""
    ids = [client.post("/api/v1/jobs", json={"input": f"listed {i}"}).get_json()["id"]
           for i in range(3)]  # fmt: skip
    done = poll(client, f"/api/v1/jobs/{ids[-1]}")
    assert done["status"] == "succeeded" and "result" in done
    sync = client.post("/api/v1/embeddings", json={"input": "a sync call"},
                       headers={"Cache-Control": "no-store"})  # fmt: skip
    assert sync.status_code == 200
    page = client.get("/api/v1/jobs?limit=2").get_json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2]  # no sync call's job among them
    newest = page["data"][0]
    assert newest["status"] == "succeeded" and "result" not in newest
    assert newest["status_url"] == f"/api/v1/jobs/{ids[-1]}" and newest["count"] == 1
    rest = client.get(f"/api/v1/jobs?limit=2&cursor={page['next_cursor']}").get_json()
    assert rest["data"][0]["id"] == ids[0]
    for bad in ("limit=0", "limit=101", "limit=x", "cursor=garbage"):
        answer = client.get(f"/api/v1/jobs?{bad}")
        assert answer.status_code == 400, bad
        assert answer.get_json()["error"]["param"] == bad.split("=")[0]
