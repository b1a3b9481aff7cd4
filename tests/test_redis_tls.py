"""Redis with a password, TLS only and client certificates (REDIS_URL=rediss://:pw@...,
REDIS_TLS_*): the CLI makes a key, and a sync call, an async job, an index job and Flower's
workers and broker pages all go through it; a client that lacks the CA is refused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from common.queueing import make_celery
from common.redis_client import connect, tls_options
from common.settings import SettingsError, load_settings
from tests.conftest import (
    MODEL,
    ROOT,
    service_env,
    start_api,
    start_flower,
    start_worker,
    stop,
    wait_for_worker,
)
from tests.helpers import wait_job
from tests.secure_redis import PASSWORD, SecureRedis

FLOWER_AUTH = ("admin", "flower-tls-pw")


@dataclass
class Stack:
    redis: SecureRedis
    api: str
    key: str
    flower: str
    logs: list[Path]

    def call(self, method: str, path: str, **kwargs: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return requests.request(method, self.api + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("tls")
    server = SecureRedis(tmp / "redis").start()
    env = server.env
    logs = [tmp / "worker.log", tmp / "api.log", tmp / "flower.log"]
    processes = []
    try:  # the API and Flower start while the worker loads its model
        made = subprocess.run(
            [sys.executable, "-m", "cli", "keys", "create", "--name", "tls"], cwd=ROOT,
            env=service_env(server.url, **env), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        processes.append(worker := start_worker(server.url, logs[0], name="tls", **env))
        api, url = start_api(server.url, logs[1], **env)
        processes.append(api)
        flower, flower_url = start_flower(
            server.url, logs[2], FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH), **env
        )
        processes.append(flower)
        wait_for_worker(server.url, worker, logs[0], "tls", timeout=90, client=server.client())
        yield Stack(server, url, made.stdout.strip(), flower_url, logs)
    finally:
        for process in processes:
            stop(process)
        server.stop()


def test_a_client_without_the_ca_or_the_tls_settings_is_refused(stack: Stack) -> None:
    url = stack.redis.url
    bare = load_settings(REDIS_URL=url)  # the system's CAs: ours is not among them
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(url, tls=tls_options(bare)).ping()
    # kombu alone would not verify a rediss:// server at all.
    with (
        pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"),
        make_celery(bare).connection_for_write() as conn,
    ):
        conn.connect()
    assert stack.redis.client().ping()
    with pytest.raises(SettingsError, match=r"REDIS_TLS_CA_FILE.*needs a rediss:// REDIS_URL"):
        load_settings(REDIS_URL="redis://127.0.0.1/0", REDIS_TLS_CA_FILE=__file__)
    with pytest.raises(SettingsError) as error:
        load_settings(REDIS_URL=f"http://:{PASSWORD}@127.0.0.1/0")
    assert PASSWORD not in str(error.value)
    assert ":***@127.0.0.1" in str(error.value)


def test_sync_call_async_job_and_index_job_over_tls(stack: Stack) -> None:
    health = stack.call("GET", "/health").json()
    assert health["redis"]["ok"] and health["status"] == "ok", health
    sync = stack.call("POST", "/api/v1/embeddings", json={"input": ["over tls"], "model": MODEL})
    assert sync.status_code == 200, sync.text
    assert len(sync.json()["data"][0]["embedding"]) == 384

    job = stack.call("POST", "/api/v1/jobs", json={"input": ["a job over tls"]})
    assert job.status_code == 202, job.text
    assert wait(stack, f"/api/v1/jobs/{job.json()['id']}")["status"] == "succeeded"

    documents = [{"id": "a", "text": "Cats over TLS."}, {"id": "b", "text": "Dogs too."}]
    index = stack.call("POST", "/api/v1/index-jobs", json={"documents": documents})
    assert index.status_code == 202, index.text
    done = wait(stack, f"/api/v1/index-jobs/{index.json()['id']}")
    assert done["status"] == "succeeded" and done["documents"]["done"] == 2, done
    rows = stack.call("GET", f"/api/v1/index-jobs/{index.json()['id']}/results").text
    assert len(rows.splitlines()) == 2


def test_flower_shows_the_worker_and_the_queues_over_tls(stack: Stack) -> None:
    # Its workers API asks the workers (broadcast and replies over the broker); its
    # workers page shows what their events said; its broker page reads the queues'
    # lengths with a Redis client of its own.
    api = page = ""
    deadline = time.monotonic() + 30
    while "tls@" not in api or "tls@" not in page:
        assert time.monotonic() < deadline, (api, page[-2000:])
        time.sleep(0.5)
        api = flower(stack, "/api/workers?refresh=1")
        page = flower(stack, "/workers")
    broker = flower(stack, "/broker")
    assert '<tr id="cpu">' in broker, broker[-2000:]
    assert "Unable to get queues" not in stack.logs[2].read_text()
    assert PASSWORD not in api + page + broker


def flower(stack: Stack, path: str) -> str:
    answer = requests.get(stack.flower + path, auth=FLOWER_AUTH, timeout=20)
    assert answer.status_code == 200, answer.text
    return answer.text


def test_the_password_shows_nowhere(stack: Stack) -> None:
    for log in stack.logs:
        assert PASSWORD not in log.read_text(), log


def wait(stack: Stack, path: str, timeout: float = 60) -> dict:
    return wait_job(lambda: stack.call("GET", path).json(), timeout)
