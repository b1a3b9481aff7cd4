"""Secrets never show: API keys (good and wrong), OPENAI_API_KEY, a pgvector sink's DSN,
the Redis password and Flower's password appear in no log line (at debug) and no answer
(errors, /health, /metrics, sinks, Flower's pages and task API) of the whole service, run
by `embeddings up` on a TLS Redis with a password; Redis URLs that are shown are masked."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from api.app import create_app
from cli.redis_server import free_port
from common.settings import load_settings
from tests.conftest import GENEROUS_LIMITS, ROOT, service_env
from tests.secure_redis import PASSWORD as REDIS_PASSWORD
from tests.secure_redis import SecureRedis
from tests.stubs.openai_stub import OpenAIStub
from tests.test_launcher import launch, wait_for

TAG = uuid.uuid4().hex[:8]
OPENAI_KEY = f"sk-openai-secret-{TAG}"
DSN_PASSWORD = f"pg-secret-{TAG}"
FLOWER_PASSWORD = f"flower-secret-{TAG}"
WRONG_KEY = f"emb_{TAG}_wrongsecret{TAG}0123456789"
FLOWER_AUTH = ("admin", FLOWER_PASSWORD)


@dataclass
class Service:
    api: str
    flower: str
    key: str
    logs: list[Path]
    """The CLI's, then the launcher's (everything it started writes there)."""
    redis_port: int
    answers: list[str] = field(default_factory=list)
    """Every answer body (and header) this module has had: searched at the end."""

    def call(
        self, method: str, path: str, key: str | None = None, **kwargs: object
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {key or self.key}", "Content-Type": "application/json"}
        answer = requests.request(
            method,
            self.api + path,
            headers=headers,
            timeout=30,
            **kwargs,  # type: ignore[arg-type]
        )
        self.answers.append(f"{answer.headers}\n{answer.text}")
        return answer

    def flower_text(self, path: str) -> str:
        answer = requests.get(self.flower + path, auth=FLOWER_AUTH, timeout=20)
        assert answer.status_code == 200, answer.text
        self.answers.append(f"{answer.headers}\n{answer.text}")
        return answer.text

    def secrets(self) -> dict[str, str]:
        return {
            "API key": self.key.split("_", 2)[2],  # its secret part; the id is public
            "wrong API key": WRONG_KEY.split("_", 2)[2],
            "OPENAI_API_KEY": OPENAI_KEY,
            "sink DSN password": DSN_PASSWORD,
            "Redis password": REDIS_PASSWORD,
            "Flower password": FLOWER_PASSWORD,
        }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("secrets")
    server = SecureRedis(tmp / "redis").start()
    stub = OpenAIStub(api_key=OPENAI_KEY).start()
    stub.default = "leak_key"  # a careless server: its 401 repeats the key it was sent
    sinks = tmp / "sinks.toml"
    dsn = f"postgresql://sinker:{DSN_PASSWORD}@127.0.0.1:{free_port()}/vectors"
    sinks.write_text(f'[sinks.pg]\nkind = "pgvector"\ndsn = "{dsn}"\ntable = "chunks"\n')
    env = server.env | GENEROUS_LIMITS | {
        "REDIS_URL": server.url, "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": f"{stub.url}/v1", "PROVIDER_MAX_RETRIES": "0",
        "SINKS_FILE": str(sinks), "SINK_MAX_RETRIES": "0", "HOST": "127.0.0.1",
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "LOG_LEVEL": "debug",  # every line a library may write, not only ours
    }  # fmt: skip
    api_port, flower_port, log = free_port(), free_port(), tmp / "up.log"
    process = None
    try:
        made = subprocess.run(
            [sys.executable, "-m", "cli", "keys", "create", "--name", "secrets", "--role", "admin"],
            cwd=ROOT, env=service_env(server.url, **env), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        (tmp / "cli.log").write_text(made.stderr)  # the CLI's own log lines: searched too
        process = launch(log, tmp / "run", api_port, flower_port, **env)
        wait_for("ready.", log, process, 120)
        yield Service(f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{flower_port}",
                      made.stdout.strip(), [tmp / "cli.log", log], server.port)  # fmt: skip
    finally:
        if process and process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(60)
        stub.stop()
        server.stop()


def test_the_launcher_shows_the_redis_url_masked(service: Service) -> None:
    line = next(x for x in service.logs[-1].read_text().splitlines() if x.startswith("redis "))
    assert line.split()[1] == f"rediss://:***@127.0.0.1:{service.redis_port}/0", line


def test_no_secret_in_any_answer_or_log_line(service: Service) -> None:
    url, call = "/api/v1/embeddings", service.call
    assert call("POST", url, json={"input": ["fine"]}).status_code == 200
    assert call("POST", url, key=WRONG_KEY, json={"input": ["x"]}).status_code == 401
    assert call("POST", "/v1/embeddings", key=WRONG_KEY, json={"input": "x"}).status_code == 401
    assert call("POST", url, data=b"{not json").status_code == 400
    assert call("POST", url, json={"input": ["x"], "model": "nope"}).status_code == 404
    refused = call("POST", url, json={"input": ["x"], "model": "text-embedding-3-small"})
    assert refused.status_code == 503, refused.text
    assert "***" in refused.json()["error"]["message"]  # what the server echoed, scrubbed
    assert call("GET", "/health").status_code == 200
    assert call("GET", "/metrics").status_code == 200
    assert call("GET", "/api/v1/sinks").json()["data"] == [{"name": "pg", "kind": "pgvector"}]
    body = {"documents": [{"id": "a", "text": "to a sink that cannot be reached"}], "sink": "pg"}
    job = call("POST", "/api/v1/index-jobs", json=body)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 30
    status_url = f"/api/v1/index-jobs/{job.json()['id']}"
    while (done := call("GET", status_url).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    assert done["status"] == "failed", done
    # Flower: its tasks API holds what Celery's events carried (the argument summaries).
    deadline = time.monotonic() + 30
    while "embeddings.index_batch" not in service.flower_text("/api/tasks"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    for page in ("/api/workers?refresh=1", "/workers", "/tasks", "/broker"):
        service.flower_text(page)
    logs = "".join(log.read_text() for log in service.logs)
    for name, secret in service.secrets().items():
        assert secret not in logs, f"{name} in the logs"
        for answer in service.answers:
            assert secret not in answer, f"{name} in an answer:\n{answer[-2000:]}"


def test_an_unreachable_redis_is_named_with_its_password_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "list"], cwd=ROOT, env=service_env(url),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    said = done.stdout + done.stderr
    assert said.startswith(f"Error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: ")
    assert len(said.splitlines()) == 1 and REDIS_PASSWORD not in said, said
    client = create_app(load_settings(REDIS_URL=url, **GENEROUS_LIMITS)).test_client()
    with caplog.at_level(logging.DEBUG):
        answers = [client.get("/health"), client.post("/api/v1/embeddings", json={"input": "x"})]
    assert answers[0].status_code == 503
    assert REDIS_PASSWORD not in caplog.text + "".join(a.get_data(as_text=True) for a in answers)
