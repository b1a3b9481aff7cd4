"""Index jobs into the sinks an operator named: parquet files and PostgreSQL with pgvector,
through the API and a real worker. Redis keeps progress, not vectors."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pyarrow.dataset as ds
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from common import redis_keys
from common.settings import Settings, load_settings
from tests.conftest import models_file, start_worker, stop, wait_for_worker
from tests.helpers import wait_job
from tests.pg import fresh_database

URL = "/api/v1/index-jobs"
QUEUE = "sinks"
MODEL = "sinky"
DSN_ENV = "TEST_SINKS_PG_DSN"
FLAKY_ENV = "TEST_SINKS_FLAKY_DSN"
LONG = " ".join(f"word{i}" for i in range(400))


@pytest.fixture(scope="module")
def flaky_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A PostgreSQL server of this module's own, to stop and start again."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("flaky-pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def setup(
    settings: Settings, pg_url: str, flaky_pg: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Flask, Path, str]]:  # fmt: skip
    """An app and a worker (queue `sinks`) with three sinks: files, pg, flaky."""
    tmp = tmp_path_factory.mktemp("sinks")
    files = tmp / "vectors"
    sinks = tmp / "sinks.toml"
    sinks.write_text(
        f'[sinks.files]\nkind = "parquet"\npath = "{files}"\n'
        f'[sinks.pg]\nkind = "pgvector"\ndsn_env = "{DSN_ENV}"\ntable = "chunks"\n'
        f'[sinks.flaky]\nkind = "pgvector"\ndsn_env = "{FLAKY_ENV}"\ntable = "chunks"\n'
    )
    dsn = fresh_database(pg_url, "sink_tests")
    env = {"MODELS_FILE": str(models_file(tmp, name=MODEL, queue=QUEUE)), "DEFAULT_MODEL": MODEL,
           "SINKS_FILE": str(sinks), "SINK_RETRY_BACKOFF_SECONDS": "0.5",
           "SINK_MAX_RETRIES": "3", DSN_ENV: dsn, FLAKY_ENV: flaky_pg.get_uri()}  # fmt: skip
    app = create_app(load_settings(**{**settings.model_dump(), **env, "INDEX_BATCH_CHUNKS": 16}))
    log = tmp / "worker.log"
    worker = start_worker(settings.REDIS_URL, log, queues=QUEUE, name="sinks", **env)
    try:
        wait_for_worker(settings.REDIS_URL, worker, log, "sinks")
        yield app, files, dsn
    finally:
        stop(worker)


@pytest.fixture
def client(setup: tuple[Flask, Path, str]) -> FlaskClient:
    return setup[0].test_client()


def wait(client: FlaskClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return wait_job(lambda: client.get(f"{URL}/{job_id}").get_json(), timeout)


def docs(n: int, prefix: str = "doc") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "text": f"passage {i}: " + "lorem ipsum dolor " * (i % 30 + 1),
             "metadata": {"n": i}} for i in range(n)]  # fmt: skip


def stop_pg(server: Any) -> None:
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def start_pg(server: Any) -> None:
    server.ensure_postgres_running()


def rows(dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args or None).fetchall()  # type: ignore[arg-type]


def test_a_parquet_sink_job_leaves_files_and_only_progress_in_redis(
    client: FlaskClient, setup: tuple[Flask, Path, str], redis_url: str
) -> None:
    files = setup[1]
    body = {"documents": [*docs(40), {"id": "long", "text": LONG}], "sink": "files"}
    job = client.post(URL, json=body).get_json()
    done = wait(client, job["id"])
    assert done["status"] == "succeeded" and done["sink"] == "files", done
    total = done["chunks"]["total"]
    assert total > 41  # the long one is chunked
    table = ds.dataset(files / job["id"], format="parquet").to_table()
    assert table.num_rows == total
    assert [f.name for f in table.schema] == ["id", "chunk", "start", "end", "metadata",
                                              "embedding"]  # fmt: skip
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[384]"
    assert len(set(zip(table["id"].to_pylist(), table["chunk"].to_pylist(), strict=True))) == total
    # The results route streams the same rows from the files.
    lines = [orjson.loads(x) for x in client.get(f"{URL}/{job['id']}/results").data.splitlines()]
    assert len(lines) == total
    assert lines[0]["metadata"] == {"n": 0}
    matrix = np.load(io.BytesIO(client.get(f"{URL}/{job['id']}/results?format=npy").data))
    assert matrix.shape == (total, 384)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)
    manifest = json.loads((files / job["id"] / "_job.json").read_text())
    assert manifest["counts"]["chunks_done"] == total
    # Redis: no vectors, plans or metadata left, only the job's counters and markers.
    broker = redis.Redis.from_url(redis_url)
    assert not broker.exists(redis_keys.index_job_part(job["id"], "plan"))
    assert not broker.exists(redis_keys.index_job_part(job["id"], "metadata"))
    markers = broker.hvals(redis_keys.index_job_part(job["id"], "vectors"))
    assert sum(int(m) for m in markers) == total


def test_a_pgvector_sink_job_upserts_rows_and_builds_the_index_once(
    client: FlaskClient, setup: tuple[Flask, Path, str]
) -> None:
    dsn = setup[2]
    first = client.post(URL, json={"documents": [{"id": "r1", "text": LONG}, *docs(10, "p")],
                                   "sink": "pg"}).get_json()  # fmt: skip
    done = wait(client, first["id"])
    assert done["status"] == "succeeded", done
    long_chunks = rows(dsn, "SELECT count(*) FROM chunks WHERE id = 'r1'")[0][0]
    assert long_chunks > 1
    found = rows(dsn, "SELECT job_id, model, metadata FROM chunks WHERE id = 'p3'")
    assert found == [(first["id"], MODEL, {"n": 3})]
    # The results live in Postgres: the route says where, never the DSN.
    answer = client.get(f"{URL}/{first['id']}/results")
    assert answer.status_code == 409
    message = answer.get_json()["error"]["message"]
    assert "'pg'" in message and "chunks" in message and dsn not in message
    # A re-index of r1 with a short text replaces all its chunks.
    again = client.post(URL, json={"documents": [{"id": "r1", "text": "now short"}],
                                   "sink": "pg"}).get_json()  # fmt: skip
    assert wait(client, again["id"])["status"] == "succeeded"
    assert rows(dsn, "SELECT chunk, job_id FROM chunks WHERE id = 'r1'") == [(0, again["id"])]
    deadline = time.monotonic() + 30
    while not rows(dsn, "SELECT 1 FROM pg_indexes WHERE tablename = 'chunks' "
                        "AND indexdef ILIKE '%hnsw%'"):  # fmt: skip
        assert time.monotonic() < deadline, "no HNSW index after the job"
        time.sleep(0.2)
    similar = rows(dsn, "SELECT id FROM chunks ORDER BY embedding <=> "
                        "(SELECT embedding FROM chunks WHERE id = 'p3') LIMIT 1")  # fmt: skip
    assert similar == [("p3",)]


def test_an_unknown_sink_is_refused_and_a_client_names_no_paths(client: FlaskClient) -> None:
    listed = client.get("/api/v1/sinks").get_json()["data"]
    assert listed == [{"name": "files", "kind": "parquet"}, {"name": "flaky", "kind": "pgvector"},
                      {"name": "pg", "kind": "pgvector"}]  # fmt: skip
    raw = client.get("/api/v1/sinks").get_data(as_text=True)
    assert "vectors" not in raw and "postgres" not in raw and "dsn" not in raw
    for sink in ("nope", "/tmp/elsewhere", "postgresql://me@evil/db"):
        answer = client.post(URL, json={"documents": docs(1), "sink": sink})
        assert answer.status_code == 400
        error = answer.get_json()["error"]
        assert error["param"] == "sink" and "files, flaky, pg" in error["message"]
    for extra in ({"path": "/tmp/x"}, {"dsn": "postgresql://me@evil/db"}, {"table": "t"}):
        answer = client.post(URL, json={"documents": docs(1), "sink": "files", **extra})
        assert answer.status_code == 400, extra
    ndjson = client.post(f"{URL}?sink=files&path=/tmp/x", data=b'{"id": 1, "text": "a"}\n',
                         content_type="application/x-ndjson")  # fmt: skip
    assert ndjson.status_code == 400


def test_duplicate_ids_are_refused_or_listed(client: FlaskClient) -> None:
    twice = [{"id": "same", "text": "first"}, {"id": "other", "text": "x"},
             {"id": "same", "text": "second"}]  # fmt: skip
    refused = client.post(URL, json={"documents": twice, "sink": "files"})
    assert refused.status_code == 400
    message = refused.get_json()["error"]["message"]
    assert "duplicate id 'same'" in message and "documents[0]" in message
    skipped = client.post(URL, json={"documents": twice, "sink": "files", "on_error": "skip"})
    assert skipped.status_code == 202
    done = wait(client, skipped.get_json()["id"])
    assert done["documents"] == {"total": 3, "done": 2, "failed": 1}
    assert done["failures"] == [
        {"id": "documents[2]", "reason": "duplicate id 'same': documents[0] has it too"}
    ]


def test_a_sink_that_is_down_is_reported_then_the_job_recovers(
    client: FlaskClient, flaky_pg: Any
) -> None:
    url = flaky_pg.get_uri()
    stop_pg(flaky_pg)
    try:
        job = client.post(URL, json={"documents": docs(8, "f"), "sink": "flaky"}).get_json()
        deadline = time.monotonic() + 60
        while not (body := client.get(f"{URL}/{job['id']}").get_json())["sink_error"]:
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert "'flaky'" in body["sink_error"] and "retrying" in body["sink_error"]
        assert url not in body["sink_error"]
        assert body["status"] == "running" and body["chunks"]["done"] == 0
    finally:
        start_pg(flaky_pg)
    done = wait(client, job["id"])
    assert done["status"] == "succeeded" and done["sink_error"] is None, done
    assert rows(url, "SELECT count(*) FROM chunks WHERE id LIKE 'f%'")[0][0] == 8


def test_a_sink_down_past_its_retries_fails_the_batch_with_the_reason(
    client: FlaskClient, flaky_pg: Any
) -> None:
    stop_pg(flaky_pg)
    try:
        job = client.post(URL, json={"documents": docs(3, "g"), "sink": "flaky"}).get_json()
        done = wait(client, job["id"], timeout=60)
    finally:
        start_pg(flaky_pg)
    assert done["status"] == "failed"
    assert done["documents"] == {"total": 3, "done": 0, "failed": 3}
    assert all("'flaky'" in f["reason"] for f in done["failures"]), done["failures"]
