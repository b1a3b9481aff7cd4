"""Structured logs: JSON lines from gunicorn, the app and the worker, the request id in the
answer and in both the API's and the worker's lines, and no input text at info."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from common import logs
from common.logs import JsonLineFormatter
from tests.conftest import MODEL

FIELDS = {"timestamp", "level", "event", "logger", "request_id", "job_id", "model"}
PLAIN_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d.*(INFO|WARNING|ERROR|DEBUG)")


def records(path: Path) -> list[dict[str, object]]:
    """Every log record of a process's output. Lines that are not records (Celery's
    start-up banner, a progress bar) are skipped; a plain-text log line fails."""
    found = []
    for line in path.read_text().splitlines():
        assert not PLAIN_LOG_LINE.match(line), f"not JSON: {line}"
        if line.startswith("{"):
            record = json.loads(line)
            assert record.keys() >= FIELDS, record
            found.append(record)
    return found


def wait_for(path: Path, needle: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text():
        assert time.monotonic() < deadline, f"{needle!r} not logged in {path}"
        time.sleep(0.1)


def test_request_id_in_the_answer_and_in_api_and_worker_logs(
    live_api: str, api_log: Path, worker_log: Path
) -> None:
    request_id = f"test-{uuid.uuid4()}"
    secret = f"private text {uuid.uuid4()}"
    answer = requests.post(
        f"{live_api}/api/v1/embeddings",
        json={"input": [secret]},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert answer.status_code == 200
    assert answer.headers["X-Request-ID"] == request_id
    wait_for(api_log, request_id)
    wait_for(worker_log, request_id)

    api = [r for r in records(api_log) if r["request_id"] == request_id]
    worker = [r for r in records(worker_log) if r["request_id"] == request_id]
    assert api and worker
    access = next(r for r in api if r["logger"] == "api.access")
    assert (access["status"], access["model"], access["route"]) == (
        200, MODEL, "/api/v1/embeddings",
    )  # fmt: skip
    job_id = access["job_id"]
    assert isinstance(job_id, str) and job_id.startswith("job_")
    assert {r["job_id"] for r in worker} == {job_id}
    assert {r["model"] for r in worker} == {MODEL}
    assert any(r["logger"] == "celery.app.trace" for r in worker)  # Celery's own lines too
    assert all(r["level"] in {"debug", "info", "warning", "error", "critical"} for r in api)
    assert any(r["logger"] == "gunicorn.error" for r in records(api_log))
    # The text itself never reaches a log line (Celery logs a summary, not the arguments).
    assert secret not in api_log.read_text()
    assert secret not in worker_log.read_text()


def test_every_answer_carries_a_request_id(bare_client: FlaskClient) -> None:
    answers = [
        bare_client.get("/livez"),
        bare_client.get("/no/such/route"),
        bare_client.post("/api/v1/embeddings", json={"input": []}),
        bare_client.put("/api/v1/embeddings", json={"input": "x"}),
        bare_client.post("/api/v1/embeddings", data="{", content_type="application/json"),
    ]
    assert [a.status_code for a in answers] == [200, 404, 400, 405, 400]
    ids = [a.headers["X-Request-ID"] for a in answers]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    kept = bare_client.get("/livez", headers={"X-Request-ID": "abc.DEF_123:4"})
    assert kept.headers["X-Request-ID"] == "abc.DEF_123:4"
    for bad in ("has space", "x" * 200, "<script>", "a;b"):
        replaced = bare_client.get("/livez", headers={"X-Request-ID": bad})
        assert replaced.headers["X-Request-ID"] != bad


def test_lines_are_json_with_the_bound_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter("worker"))
    logger = logging.getLogger("workers.test_logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logs.start(request_id="r-1", job_id="job_x", model="m")
        logger.info("embedded %d texts", 3, extra={"texts": 3})
        logs.clear()
        logger.info("outside a request")
    finally:
        logger.removeHandler(handler)
        logs.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "embedded 3 texts"
    assert (first["level"], first["service"], first["texts"]) == ("info", "worker", 3)
    assert (first["request_id"], first["job_id"], first["model"]) == ("r-1", "job_x", "m")
    assert first["timestamp"].endswith("+00:00")
    assert (second["request_id"], second["job_id"], second["model"]) == (None, None, None)


@pytest.mark.parametrize(
    ("log_level", "rust_log", "root", "own"),
    [
        ("info", None, logging.INFO, None),
        ("info", "debug", logging.DEBUG, None),
        ("info", "embeddings=debug", logging.INFO, logging.DEBUG),
        ("debug", "warn", logging.DEBUG, None),  # RUST_LOG only ever turns logging up
        ("warning", "info,embeddings=trace", logging.INFO, logging.DEBUG),
        ("info", "nonsense", logging.INFO, None),
    ],
)
def test_log_level_and_rust_log(
    log_level: str, rust_log: str | None, root: int, own: int | None
) -> None:
    got_root, targets = logs.levels(log_level, rust_log)
    assert got_root == root
    assert targets.get("api") == own
    assert targets.get("workers") == own


def test_celery_and_library_targets_in_rust_log() -> None:
    _, targets = logs.levels("info", "celery::worker=debug,kombu=debug")
    assert targets == {"celery.worker": logging.DEBUG, "kombu": logging.DEBUG}
