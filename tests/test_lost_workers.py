"""A lost worker's messages come back within a minute, with default settings: a worker
SIGKILLed mid-job (OOM, a lost node), or SIGSTOPped (hung, cut off) and resumed later,
whose late writes then change nothing (workers/redelivery.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
DSN_ENV = "TEST_LOST_PG_DSN"


@pytest.fixture
def stack(
    settings: Settings, pg_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Flask, dict[str, str], Path, str]]:
    """An app, the environment of its workers (queue named after the test), the parquet
    directory and the database of its sinks."""
    queue = request.node.name.removeprefix("test_")[:20]
    sinks = tmp_path / "sinks.toml"
    files = tmp_path / "vectors"
    sinks.write_text(
        f'[sinks.files]\nkind = "parquet"\npath = "{files}"\n'
        f'[sinks.pg]\nkind = "pgvector"\ndsn_env = "{DSN_ENV}"\ntable = "chunks"\n'
    )
    dsn = fresh_database(pg_url, queue)
    env = {"MODELS_FILE": str(models_file(tmp_path, name="lost", queue=queue)),
           "DEFAULT_MODEL": "lost", "SINKS_FILE": str(sinks), DSN_ENV: dsn}  # fmt: skip
    app = create_app(load_settings(**{**settings.model_dump(), **env, "INDEX_BATCH_CHUNKS": 16}))
    yield app, env | {"queue": queue}, files, dsn


def documents(n: int) -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "text": f"text {i} " + "lorem ipsum dolor sit " * (i % 20 + 1)}
            for i in range(n)]  # fmt: skip


def poll(client: FlaskClient, job_id: str, timeout: float) -> dict[str, Any]:
    return wait_job(lambda: client.get(f"{URL}/{job_id}").get_json(), timeout, 0.25)


def held_by(broker: redis.Redis, worker: str) -> list[str]:
    raw = broker.hget(redis_keys.WORKERS_HELD, f"{worker}@{os.uname().nodename}")
    return json.loads(raw)["tags"] if raw else []


def pg_rows(dsn: str, job_id: str) -> list[tuple[Any, ...]]:
    """(id, chunk, updated_at) of the job's rows."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT id, chunk, updated_at FROM chunks WHERE job_id = %s ORDER BY id, chunk",
            (job_id,),
        )
        return found.fetchall()


def test_sigkill_mid_job_redone_within_a_minute_exactly_once_into_both_sinks(
    stack: tuple[Flask, dict[str, str], Path, str], redis_url: str, tmp_path: Path
) -> None:
    """Default settings: the visibility timeout (30 min) never comes into it."""
    app, env, files, dsn = stack
    queue = env.pop("queue")
    client = app.test_client()
    broker = redis.Redis.from_url(redis_url)
    victim = start_worker(redis_url, tmp_path / "victim.log", queues=queue, name="victim", **env)
    try:
        wait_for_worker(redis_url, victim, tmp_path / "victim.log", "victim")
        jobs = {sink: client.post(URL, json={"documents": documents(300), "sink": sink})
                .get_json()["id"] for sink in ("files", "pg")}  # fmt: skip
        deadline = time.monotonic() + 120
        # Mid-job: some chunks stored, and at least two messages in the victim's hands (it
        # is the only consumer of the queue, so kombu's unacked entries are all its own).
        while not (any(client.get(f"{URL}/{j}").get_json()["chunks"]["done"] for j in
                       jobs.values()) and broker.hlen("unacked") >= 2):  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        held = {tag.decode() for tag in broker.hkeys("unacked")}
        killed_at = time.monotonic()
        victim.wait()
    finally:
        stop(victim)
    lost = held & {tag.decode() for tag in broker.hkeys("unacked")}
    assert lost  # taken by the dead worker, never acked
    survivor = start_worker(redis_url, tmp_path / "survivor.log", queues=queue,
                            name="survivor", **env)  # fmt: skip
    try:
        while lost & {tag.decode() for tag in broker.hkeys("unacked")}:
            assert time.monotonic() - killed_at < 60, "not given back within a minute"
            time.sleep(0.25)
        done = {sink: poll(client, job_id, timeout=240) for sink, job_id in jobs.items()}
    finally:
        stop(survivor)
    for sink, job in done.items():
        assert job["status"] == "succeeded", (sink, job)
        assert job["documents"] == {"total": 300, "done": 300, "failed": 0}
    table = ds.dataset(files / jobs["files"], format="parquet").to_table(columns=["id", "chunk"])
    parquet = list(zip(table["id"].to_pylist(), table["chunk"].to_pylist(), strict=True))
    assert len(parquet) == len(set(parquet)) == done["files"]["chunks"]["total"]
    in_pg = [row[:2] for row in pg_rows(dsn, jobs["pg"])]
    assert len(in_pg) == len(set(in_pg)) == done["pg"]["chunks"]["total"]


def test_a_stopped_worker_is_given_up_and_its_late_writes_change_nothing(
    stack: tuple[Flask, dict[str, str], Path, str], redis_url: str, tmp_path: Path
) -> None:
    app, env, _, dsn = stack
    queue = env.pop("queue")
    env["WORKER_LOST_AFTER_SECONDS"] = "6"
    client = app.test_client()
    broker = redis.Redis.from_url(redis_url)
    logs = {name: tmp_path / f"{name}.log" for name in ("stopped", "steady")}
    workers = {name: start_worker(redis_url, log, queues=queue, name=name, **env)
               for name, log in logs.items()}  # fmt: skip
    try:
        for name, process in workers.items():
            wait_for_worker(redis_url, process, logs[name], name)
        job_id = client.post(URL, json={"documents": documents(400), "sink": "pg"}).get_json()["id"]
        deadline = time.monotonic() + 120
        while not held_by(broker, "stopped"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(workers["stopped"].pid, signal.SIGSTOP)
        try:
            done = poll(client, job_id, timeout=150)  # the steady worker redid its batches
            assert done["status"] == "succeeded", done
            rows = pg_rows(dsn, job_id)
            assert len({row[:2] for row in rows}) == len(rows) == done["chunks"]["total"]
        finally:
            os.kill(workers["stopped"].pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while "this late one is dropped" not in logs["stopped"].read_text():
            assert time.monotonic() < deadline, logs["stopped"].read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1)
        assert pg_rows(dsn, job_id) == rows  # not one row added or rewritten
        again = client.get(f"{URL}/{job_id}").get_json()
        assert again["chunks"] == done["chunks"] and again["documents"] == done["documents"]
    finally:
        for process in workers.values():
            stop(process)
