"""The service started the way the launcher starts it (Redis, gunicorn, one CPU worker),
on free ports that are not the machine's own 6379 and 3010."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from cli.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
RESERVED_PORTS = {6379, 3010}
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def unreserved_port() -> int:
    """A free port that is not one the machine's own services may use."""
    while (port := free_port()) in RESERVED_PORTS:
        pass
    return port


def wait_healthy(base: str, children: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """Until GET /health says ok; fails early if a child exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            raise RuntimeError("a service process exited before the service was ready")
        try:
            if requests.get(f"{base}/health", timeout=2).json().get("status") == "ok":
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base}/health did not say ok within {READY_TIMEOUT_S:g}s")


class LocalService:
    """Context manager: Redis, the API and a worker in a temporary directory, then stopped."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="embeddings-bench-")
        self.dir = Path(self._tmp.name)
        self.port = unreserved_port()
        self.redis = RedisServer(data_dir=self.dir / "redis", port=unreserved_port(), persist=False)
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pids(self) -> tuple[int, int]:
        """The gunicorn master's and the Celery worker's."""
        if not (self.api and self.worker):
            raise RuntimeError("the service is not started")
        return self.api.pid, self.worker.pid

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", *args]
        # A session of its own: Ctrl-C reaches the bench, which stops the service in order.
        with (self.dir / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def __enter__(self) -> LocalService:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        # redis-server shares our process group: it inherits SIGINT blocked, so Ctrl-C
        # cannot take it away before the API and the worker are stopped.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.redis.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        env = dict(
            os.environ,
            PORT=str(self.port),
            HOST="127.0.0.1",
            REDIS_URL=self.redis.url,
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            # Every request still passes the limiter; none is refused: all come from 127.0.0.1.
            RATE_LIMIT_REQUESTS_PER_MINUTE=str(10**9),
            RATE_LIMIT_BURST=str(10**9),
        )
        self.api = self._spawn(
            "api", ["gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"], env
        )
        self.worker = self._spawn("worker", [
            "celery", "-A", "workers.celery_app", "worker", "-Q", "cpu", "--pool", "threads",
            "--concurrency", "16", "-n", "bench-cpu@%h", "--loglevel", "warning",
        ], env)  # fmt: skip
        try:
            wait_healthy(self.url, [self.api, self.worker])
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{self.log_tails()}") from None

    def log_tails(self, lines: int = 20) -> str:
        out = []
        for log in sorted(self.dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM the API and the worker, kill what outlives the timeout, then Redis."""
        children = [p for p in (self.api, self.worker) if p and p.poll() is None]
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.redis.stop()
        self._tmp.cleanup()

    def __exit__(self, *exc: object) -> None:
        self.stop()
