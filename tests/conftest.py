"""Real parts: a redis-server on a free port (unless REDIS_URL is given) and a real
Celery worker subprocess with the real shipped model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from cli.redis_server import RedisServer, free_port
from common import presence
from common.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
os.environ["HF_HUB_OFFLINE"] = "1"


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, REDIS_URL=redis_url, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
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
    return load_settings(REDIS_URL=redis_url, GPU_ENABLED=False)


def start_worker(
    redis_url: str, log_path: Path, queues: str = "cpu,gpu", name: str = "test", **env: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
        "--pool", "threads", "--concurrency", "8", "-n", f"{name}@%h", "--loglevel", "info",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=service_env(redis_url, **env), stdout=log, stderr=subprocess.STDOUT
        )


def wait_for_worker(
    redis_url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    name: str,
    timeout: float = 180,
) -> None:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"worker exited:\n{log_path.read_text()[-3000:]}")
        if any(w.name.startswith(f"{name}@") and w.models for w in presence.online(client)):
            return
        time.sleep(0.2)
    pytest.fail(f"worker not ready:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One worker for the session, on the cpu and gpu queues, with the real model."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(redis_url, log_path)
    wait_for_worker(redis_url, process, log_path, "test")
    yield
    stop(process)


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
