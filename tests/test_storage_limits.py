"""Storage limits in bytes: Redis's fill (507), the bytes waiting on the queues (503), each
key's share (507), and uploads bigger than a limit could ever take (413), on a Redis of
their own with a small maxmemory (noeviction), as the launcher and the deploy files run it.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from cli.redis_server import RedisServer, maxmemory_bytes
from common import storage
from common.api_keys import KeyLimits, KeyStore
from common.settings import Settings, SettingsError, load_settings
from tests.conftest import held_settings

MAXMEMORY = 24 * 1024**2


@pytest.fixture(scope="module")
def small_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("small-redis"), persist=False,
                         maxmemory=MAXMEMORY).start()  # fmt: skip
    yield server.url
    server.stop()


@pytest.fixture
def small(small_redis: str) -> redis.Redis:
    client = redis.Redis.from_url(small_redis)
    client.flushdb()
    return client


def app_on(settings: Settings, tmp_path: Path, url: str, **overrides: object) -> Flask:
    """An app on the small Redis whose model's queue no worker serves: jobs stay queued."""
    return create_app(held_settings(settings, tmp_path, REDIS_URL=url, **overrides))


def upload_file(client: FlaskClient, size: int, token: str | None = None, tag: str = "a"):
    line = b'{"custom_id": "%s", "method": "POST", "url": "/v1/embeddings", "body": {"input": "' % (
        tag.encode()
    )
    content = line + b"x" * (size - len(line) - 4) + b'"}}\n'
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    form = {"file": (io.BytesIO(content), "in.jsonl"), "purpose": "batch"}
    return client.post("/v1/files", data=form, content_type="multipart/form-data",
                       headers=headers)  # fmt: skip


def spaced(size: int, tag: object = "w") -> str:
    """A text of `size` characters that is never cut (whitespace does not count toward
    the model's bound: common/tokenization.char_limit)."""
    return f"{tag}" + " " * (size - len(str(tag)))


def test_redis_config_refuses_rather_than_evicts(small: redis.Redis) -> None:
    config = small.config_get("maxmemory*")
    assert int(config["maxmemory"]) == MAXMEMORY
    assert config["maxmemory-policy"] == "noeviction"


def test_files_jobs_and_index_jobs_get_507_once_redis_is_nearly_full(
    settings: Settings, tmp_path: Path, small_redis: str, small: redis.Redis
) -> None:
    client = app_on(settings, tmp_path, small_redis, MAX_FILE_BYTES=4 * 1024**2,
                    STORAGE_BYTES_PER_KEY=10**9, MAX_QUEUED_BYTES=10**9).test_client()  # fmt: skip
    statuses = []
    for i in range(12):  # 48 MB offered to a 24 MB Redis
        response = upload_file(client, 3 * 1024**2, tag=str(i))
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
    assert statuses[-1] == 507, statuses
    assert set(statuses[:-1]) == {200}
    body = response.get_json()["error"]
    assert "Redis is" in body["message"] and "full" in body["message"]  # OpenAI's shape
    assert int(small.info("memory")["used_memory"]) < MAXMEMORY * 1.2  # refused in time
    job = client.post("/api/v1/jobs", json={"input": "hello"})
    assert job.status_code == 507, job.get_data(as_text=True)
    index = client.post("/api/v1/index-jobs", json={"documents": [{"id": "a", "text": "x"}]})
    assert index.status_code == 507, index.get_data(as_text=True)


def test_a_file_past_max_file_bytes_is_413_before_redis(
    settings: Settings, tmp_path: Path, small_redis: str, small: redis.Redis
) -> None:
    client = app_on(settings, tmp_path, small_redis, MAX_FILE_BYTES=1024**2).test_client()
    before = int(small.info("memory")["used_memory"])
    response = upload_file(client, 2 * 1024**2)
    assert response.status_code == 413, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert "MAX_FILE_BYTES" in error["message"] and str(1024**2) in error["message"]
    assert not small.keys("emb:oa:file:*")  # nothing reached Redis
    assert int(small.info("memory")["used_memory"]) < before + 512 * 1024


def test_queued_bytes_are_limited(
    settings: Settings, tmp_path: Path, small_redis: str, small: redis.Redis
) -> None:
    """MAX_QUEUED_BYTES counts the bytes of the tasks waiting, not their number."""
    limit = 200_000
    client = app_on(settings, tmp_path, small_redis, MAX_QUEUED_BYTES=limit).test_client()
    accepted = 0
    for i in range(10):
        response = client.post("/api/v1/jobs", json={"input": spaced(60_000, i)})
        if response.status_code != 202:
            break
        accepted += 1
    assert accepted == 3, response.get_data(as_text=True)  # 3 x 60 KB; the 4th would pass
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    error = response.get_json()["error"]
    assert error["type"] == "queue_full" and "MAX_QUEUED_BYTES" in error["message"]
    assert str(limit) in error["message"]
    assert storage.used(small, storage.QUEUED) > 3 * 60_000
    # More than the limit could ever take: 413, not "retry later".
    whole = client.post("/api/v1/jobs", json={"input": [spaced(150_000)] * 2})
    assert whole.status_code == 413, whole.get_data(as_text=True)
    assert "MAX_QUEUED_BYTES" in whole.get_json()["error"]["message"]
    index = client.post("/api/v1/index-jobs", json={"documents": [
        {"id": str(i), "text": "word " * 30_000} for i in range(3)]})  # fmt: skip
    assert index.status_code == 413, index.get_data(as_text=True)


def test_each_key_has_its_storage_quota(
    settings: Settings, tmp_path: Path, small_redis: str, small: redis.Redis
) -> None:
    """Files and queued texts count against their key's STORAGE_BYTES_PER_KEY; a delete
    frees the file's bytes; another key's share is its own."""
    app = app_on(settings, tmp_path, small_redis, STORAGE_BYTES_PER_KEY=300_000,
                 MAX_FILE_BYTES=200_000, AUTH_REQUIRED=True)  # fmt: skip
    client = app.test_client()
    keystore = KeyStore(small)
    (first, first_token), (_, second_token) = keystore.create("a"), keystore.create("b")
    kept = upload_file(client, 160_000, first_token)
    assert kept.status_code == 200, kept.get_data(as_text=True)
    refused = upload_file(client, 160_000, first_token)
    assert refused.status_code == 507, refused.get_data(as_text=True)
    message = refused.get_json()["error"]["message"]
    assert "STORAGE_BYTES_PER_KEY" in message and "300000" in message
    assert upload_file(client, 160_000, second_token).status_code == 200  # its own share
    # Queued texts count too: a job of 160 KB does not fit beside the file either.
    headers = {"Authorization": f"Bearer {first_token}"}
    job = client.post("/api/v1/jobs", json={"input": spaced(160_000)}, headers=headers)
    assert job.status_code == 507, job.get_data(as_text=True)
    assert storage.used(small, storage.owner_bucket(first.id)) >= 160_000
    # Deleting the file gives its bytes back.
    gone = client.delete(f"/v1/files/{kept.get_json()['id']}", headers=headers)
    assert gone.status_code == 200
    assert storage.used(small, storage.owner_bucket(first.id)) == 0
    job = client.post("/api/v1/jobs", json={"input": spaced(160_000)}, headers=headers)
    assert job.status_code == 202, job.get_data(as_text=True)
    assert storage.used(small, storage.owner_bucket(first.id)) >= 160_000


def test_a_key_record_sets_its_own_storage_limit(
    settings: Settings, tmp_path: Path, small_redis: str, small: redis.Redis
) -> None:
    """storage_bytes on a key (embeddings keys create --storage-bytes) in place of
    STORAGE_BYTES_PER_KEY, for that key only."""
    app = app_on(settings, tmp_path, small_redis, STORAGE_BYTES_PER_KEY=300_000,
                 AUTH_REQUIRED=True)  # fmt: skip
    client = app.test_client()
    keystore = KeyStore(small)
    _, small_token = keystore.create("small", limits=KeyLimits(storage_bytes=100_000))
    _, plain_token = keystore.create("plain")
    assert upload_file(client, 60_000, small_token, tag="1").status_code == 200
    refused = upload_file(client, 60_000, small_token, tag="2")
    assert refused.status_code == 507, refused.get_data(as_text=True)
    assert "this key's storage_bytes (100000)" in refused.get_json()["error"]["message"]
    for tag in ("1", "2"):  # the setting's 300 KB for a key without its own limit
        assert upload_file(client, 60_000, plain_token, tag=tag).status_code == 200


def test_a_worker_taking_the_task_releases_its_bytes(
    client: FlaskClient, held_app: Flask, redis_url: str
) -> None:
    """With the session's worker: a job's bytes are held while it waits (a job on a queue
    nobody serves keeps them), and released once a worker takes it."""
    session = redis.Redis.from_url(redis_url)
    before = storage.used(session, storage.QUEUED)
    assert (
        held_app.test_client().post("/api/v1/jobs", json={"input": spaced(50_000)}).status_code
        == 202
    )
    waiting = storage.used(session, storage.QUEUED)
    assert waiting >= before + 50_000
    job = client.post("/api/v1/jobs", json={"input": spaced(80_000, time.time())})
    assert job.status_code == 202
    deadline = time.monotonic() + 60
    while client.get(job.get_json()["status_url"]).get_json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert storage.used(session, storage.QUEUED) == waiting


def test_the_launcher_redis_maxmemory_setting() -> None:
    """REDIS_MAXMEMORY: a share of RAM (the default, 25%) or Redis's own units."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert maxmemory_bytes(load_settings().REDIS_MAXMEMORY) == ram // 4
    assert maxmemory_bytes("1gb") == 1024**3 and maxmemory_bytes("512mb") == 512 * 1024**2
    assert maxmemory_bytes("123456") == 123456
    with pytest.raises(SettingsError, match="REDIS_MAXMEMORY"):
        load_settings(REDIS_MAXMEMORY="lots")
