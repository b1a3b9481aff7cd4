"""API keys and ownership, rate limits across processes, backpressure, deadlines, secrets.

Runs on its own Redis: once a key exists there, auth is on for every caller of it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import redis
import requests
from flask import Flask

from api.app import create_app
from cli.redis_server import RedisServer
from common import redis_keys
from common.api_keys import KeyStore
from common.jobs import JobStore
from common.queueing import EMBED_TASK, make_celery
from common.schemas import EmbedOptions, EmbedTask
from common.settings import Settings, load_settings
from tests.conftest import (
    GENEROUS_LIMITS,
    OPEN_MODE,
    ROOT,
    held_settings,
    models_file,
    service_env,
    start_api,
    stop,
)
from tests.helpers import wait_until


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis", persist=False).start()
    yield server.url
    server.stop()


def on_redis(url: str, tmp_path: Path, **overrides: object) -> Settings:
    """Held settings (jobs stay queued) on the given Redis, in open mode unless overridden."""
    base = load_settings(REDIS_URL=url, **GENEROUS_LIMITS, **OPEN_MODE)
    return held_settings(base, tmp_path, **overrides)


def test_keys_isolate_owners_and_unknown_keys_are_refused(own_redis: str, tmp_path: Path) -> None:
    app = create_app(on_redis(own_redis, tmp_path))
    client = app.test_client()
    assert client.post("/api/v1/jobs", json={"input": "open"}).status_code == 202  # no key yet
    store = KeyStore(redis.Redis.from_url(own_redis))
    alice, alice_key = store.create("alice")
    _, bob_key = store.create("bob")
    time.sleep(1.1)  # each process re-reads "does any key exist" once a second
    as_alice = {"Authorization": f"Bearer {alice_key}"}
    as_bob = {"X-API-Key": bob_key}
    missing = client.post("/api/v1/jobs", json={"input": "x"})
    assert missing.status_code == 401
    assert missing.get_json()["error"]["type"] == "authentication_error"
    forged = {"Authorization": "Bearer emb_nope_nope"}
    assert client.post("/api/v1/jobs", json={"input": "x"}, headers=forged).status_code == 401
    job = client.post("/api/v1/jobs", json={"input": "x"}, headers=as_alice).get_json()
    assert client.get(job["status_url"], headers=as_alice).status_code == 200
    assert client.get(job["status_url"], headers=as_bob).status_code == 404
    assert client.delete(job["status_url"], headers=as_bob).status_code == 404
    docs = {"documents": [{"id": "d", "text": "t"}]}
    index = client.post("/api/v1/index-jobs", json=docs, headers=as_alice).get_json()
    assert client.get(index["status_url"], headers=as_bob).status_code == 404
    assert client.get("/api/v1/index-jobs", headers=as_bob).get_json()["data"] == []
    listed = client.get("/api/v1/index-jobs", headers=as_alice).get_json()["data"]
    assert [j["id"] for j in listed] == [index["id"]]
    assert client.get("/livez").status_code == 200  # probes stay open
    assert client.get("/metrics").status_code == 401  # metrics do not
    stored = redis.Redis.from_url(own_redis).hget(redis_keys.API_KEYS, alice.id)
    assert alice_key.split("_", 2)[2].encode() not in stored  # only the hash is kept
    assert store.revoke(alice.id)
    assert client.get(job["status_url"], headers=as_alice).status_code == 401


def test_openai_sdk_sees_authentication_errors(own_redis: str, tmp_path: Path) -> None:
    app = create_app(on_redis(own_redis, tmp_path, AUTH_REQUIRED=True))
    import httpx

    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://svc")
    sdk = openai.OpenAI(base_url="http://svc/v1", api_key="wrong", http_client=http,
                        max_retries=0)  # fmt: skip
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk.embeddings.create(model="held", input="x")
    assert "wrong" not in str(raised.value)  # the key is never echoed


def test_keys_cli(own_redis: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", "keys", *args], cwd=ROOT,
                              env=service_env(own_redis), capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    created = cli("create", "--name", "ci")
    assert created.returncode == 0, created.stderr
    text = created.stdout.strip()
    key_id = text.split("_")[1]
    assert KeyStore(redis.Redis.from_url(own_redis)).verify(text) is not None
    assert key_id in cli("list").stdout and text not in cli("list").stdout
    assert cli("revoke", key_id).returncode == 0
    assert KeyStore(redis.Redis.from_url(own_redis)).verify(text) is None


def test_rate_limit_holds_across_two_gunicorn_workers(own_redis: str, tmp_path: Path) -> None:
    api, url = start_api(own_redis, tmp_path / "api.log", RATE_LIMIT_BURST="5",
                         RATE_LIMIT_REQUESTS_PER_MINUTE="6", MODELS_FILE=str(models_file(tmp_path)),
                         DEFAULT_MODEL="held")  # fmt: skip
    try:
        answers = [requests.get(f"{url}/api/v1/models", timeout=10) for _ in range(12)]
    finally:
        stop(api)
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 5, codes  # one bucket for both processes, not 5 each
    refused = answers[-1]
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["X-RateLimit-Limit"] == "5"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert answers[0].headers["X-RateLimit-Remaining"] == "4"


def test_backpressure_refuses_at_once(own_redis: str, tmp_path: Path) -> None:
    app: Flask = create_app(on_redis(
        own_redis, tmp_path, MAX_CONCURRENT_REQUESTS=2, WEB_CONCURRENCY=1,
        REQUEST_TIMEOUT_SECONDS=2, MAX_QUEUE_DEPTH=4,
    ))  # fmt: skip
    start = threading.Barrier(6)

    def call(i: int) -> tuple[int, float]:
        start.wait()
        began = time.monotonic()
        response = app.test_client().post("/api/v1/embeddings", json={"input": f"t{i}"})
        return response.status_code, time.monotonic() - began

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    waited = [r for r in results if r[0] == 504]
    refused = [r for r in results if r[0] == 429]
    assert len(waited) == 2 and len(refused) == 4, results
    assert all(seconds < 1 for _, seconds in refused)  # answered at once, not queued
    client = app.test_client()
    while (r := client.post("/api/v1/jobs", json={"input": "fill"})).status_code == 202:
        pass  # the queue fills up to MAX_QUEUE_DEPTH
    assert r.status_code == 503
    assert r.get_json()["error"]["type"] == "queue_full"
    assert r.headers["Retry-After"]


def test_a_deadline_that_passed_drops_the_work(
    client: object, settings: Settings, tmp_path: Path
) -> None:
    """The client said how long it would wait; a worker that gets the job later skips it."""
    app = create_app(held_settings(settings, tmp_path))
    http = app.test_client()
    began = time.monotonic()
    answer = http.post("/api/v1/embeddings", json={"input": "x"},
                       headers={"X-Request-Timeout": "0.3"})  # fmt: skip
    assert answer.status_code == 504 and time.monotonic() - began < 2
    assert "within 0.3s" in answer.get_json()["error"]["message"]  # the wait that applied
    assert http.post("/api/v1/embeddings", json={"input": "x"},
                     headers={"X-Request-Timeout": "soon"}).status_code == 400  # fmt: skip
    jobs = JobStore(redis.Redis.from_url(settings.REDIS_URL), 600)
    job_id = jobs.create("all-MiniLM-L6-v2", "cpu", 1, 3, {}, "public")
    late = EmbedTask(job_id=job_id, model="all-MiniLM-L6-v2", texts=["x"], tokens=[3],
                     options=EmbedOptions(), deadline=time.time() - 1)  # fmt: skip
    make_celery(settings).send_task(EMBED_TASK, args=[late.model_dump()], queue="cpu")
    job = wait_until(lambda: jobs.get(job_id), lambda job: job.status.value != "queued", 30)
    assert job.status.value == "failed"
    assert job.error and job.error["type"] == "deadline_exceeded"
