"""Structured logs: JSON lines from gunicorn, the app and the worker, the request id in the
answer and in both the API's and the worker's lines, and no input text at info; readable
lines instead in a terminal (LOG_FORMAT=console), for `embeddings up` and its processes."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from cli import processes
from cli.redis_server import free_port
from common import logs
from common.logs import JsonLineFormatter
from common.settings import SettingsError, load_settings
from tests.conftest import MODEL, ROOT, models_file, wait_logged

FIELDS = {"timestamp", "level", "event", "logger", "request_id", "job_id", "model"}
PLAIN_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d.*(INFO|WARNING|ERROR|DEBUG)")
CONSOLE_LINE = r"\d\d:\d\d:\d\d\.\d{3} (?P<service>\w+) +(?P<level>[A-Z]+) +(?P<logger>[\w.]+): "


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
    wait_logged(api_log, request_id)
    wait_logged(worker_log, request_id)

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
    # Each task's own line (workers/metrics.py); Celery's "received" and "succeeded" lines
    # say less and show at debug only.
    assert any(r["logger"] == "workers.metrics" and r["outcome"] == "ok" for r in worker)
    assert not any(r["logger"] in {"celery.app.trace", "celery.worker.strategy"} for r in worker)
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


def test_console_lines_carry_the_same_fields_readably() -> None:
    stream = io.StringIO()
    handler = logs.line_handler("worker", stream, log_format="console")
    logger, celery = logging.getLogger("workers.test_console"), logging.getLogger("celery.test")
    for each in (logger, celery):
        each.addHandler(handler)
        each.setLevel(logging.INFO)
    try:
        logs.start(request_id="r-1", job_id="job_x", model="m")
        logger.info("embedded %d texts", 3, extra={"texts": 3, "why": "two words"})
        logs.clear()
        try:
            raise ValueError("bad input")
        except ValueError:
            logger.exception("failed")
        # Celery's trace lines carry the task's arguments: dropped here as in JSON.
        celery.info("task done", extra={"data": {"args": "private text", "id": "t1"}})
    finally:
        logger.removeHandler(handler)
        celery.removeHandler(handler)
        logs.clear()
    lines = stream.getvalue().splitlines()
    first = re.fullmatch(CONSOLE_LINE + "embedded 3 texts  (?P<pairs>.*)", lines[0])
    assert first, lines[0]
    assert (first["service"], first["level"], first["logger"]) == (
        "worker", "INFO", "workers.test_console",
    )  # fmt: skip
    assert first["pairs"] == 'request_id=r-1 job_id=job_x model=m texts=3 why="two words"'
    assert re.fullmatch(CONSOLE_LINE + "failed", lines[1]), lines[1]  # no null fields
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[lines.index("ValueError: bad input") + 1].endswith(': task done  data={"id":"t1"}')
    assert "private text" not in stream.getvalue()


def test_log_format_is_console_only_on_a_terminal_unless_set() -> None:
    leader, follower = os.openpty()
    with open(follower, "w") as terminal, open(os.devnull, "w") as file:
        assert logs.resolve_format(None, terminal) == "console"
        assert logs.resolve_format(None, file) == "json"  # a container's stderr, a pipe
        assert logs.resolve_format("json", terminal) == "json"
        assert logs.resolve_format("console", file) == "console"
        handler = logs.line_handler("api", terminal, log_format=None)
        assert type(handler.formatter) is logs.ConsoleLineFormatter
    os.close(leader)
    assert load_settings(LOG_FORMAT="Console").LOG_FORMAT == "console"
    assert load_settings(LOG_FORMAT="").LOG_FORMAT is None  # `LOG_FORMAT=` in a compose file
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        load_settings(LOG_FORMAT="xml")


def read_until(leader: int, output: bytearray, done: re.Pattern[bytes], timeout: float) -> bool:
    """Read a pseudo-terminal into `output` until `done` matches it, its last writer is
    gone, or `timeout` passes; whether `done` matched."""
    deadline = time.monotonic() + timeout
    while not done.search(output) and time.monotonic() < deadline:
        if select.select([leader], [], [], 0.5)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return bool(done.search(output))
            if not chunk:
                break
            output += chunk
    return bool(done.search(output))


def test_up_in_a_terminal_prints_readable_lines_from_every_process(tmp_path: Path) -> None:
    """`embeddings up` with its output on a terminal and LOG_FORMAT unset: the API's and
    the worker's lines are readable ones, and none is JSON. (The debug backend keeps the
    worker's start short.)"""
    models = models_file(tmp_path, name="debug", queue="local", backend="debug")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LOG_FORMAT")}
    env |= {"HF_HUB_OFFLINE": "1", "PORT": str(free_port()), "MODELS_FILE": str(models),
            "DEFAULT_MODEL": "debug"}  # fmt: skip
    args = [sys.executable, "-m", "cli", "up", "--flower-port", str(free_port()),
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    leader, follower = os.openpty()
    process = processes.spawn(
        args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = bytearray()
    try:
        ready = read_until(leader, output, re.compile(rb"^ready\.", re.M), 180)
        assert ready, output.decode(errors="replace")[-3000:]
        # Every process has logged by now (gunicorn's boot, the worker's metrics port).
        read_until(leader, output, re.compile(rb"never"), 1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        read_until(leader, output, re.compile(rb"never"), 60)
        process.wait(60)
        os.close(leader)
    text = output.decode(errors="replace").replace("\r", "")
    services = {m["service"] for m in re.finditer(CONSOLE_LINE, text)}
    assert {"api", "worker"} <= services, text[-3000:]
    assert '{"timestamp"' not in text, text[-3000:]
