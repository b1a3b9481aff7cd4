"""The service started the way the launcher starts it (Redis, gunicorn, one CPU worker),
on free ports that are not the machine's own 6379 and 3010, for every suite that starts
one: the benchmarked model, the worker's backend, its batch counters.

Redis, the API and the worker run as the launcher runs them (cli/processes.py): in
sessions of their own that end with the bench, so Ctrl-C reaches only the bench, which
stops them in order, and a killed bench leaves nothing running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis
import requests

from cli import processes
from cli.redis_server import RedisServer, free_port
from common import redis_keys
from common.registry import BUILTIN_MODELS_FILE, ModelSpec

ROOT = Path(__file__).resolve().parent.parent
RESERVED_PORTS = {6379, 3010}
READY_TIMEOUT_S = 180.0
WORKER_START_TIMEOUT_S = 900.0  # the first onnx start exports the model
STOP_TIMEOUT_S = 30.0
MODEL = "all-MiniLM-L6-v2"
API = "gunicorn -c api/gunicorn_conf.py api.wsgi:app"


def worker_command(queue: str) -> str:
    return f"celery -A workers.celery_app worker -Q {queue} --pool threads --concurrency 16"


WORKER = worker_command("cpu")
RAISED_LIMITS = {
    # Explicit open mode, as `embeddings up` runs: no key needed while none was ever made.
    "AUTH_REQUIRED": "false",
    # Every request still passes the limiter; none is refused, though all come from 127.0.0.1.
    "RATE_LIMIT_REQUESTS_PER_MINUTE": str(10**9),
    "RATE_LIMIT_BURST": str(10**9),
}
MANY_CLIENTS_ENV = {
    # For many concurrent clients: two gunicorn processes and 200 sync slots.
    "WEB_CONCURRENCY": "2",
    "MAX_CONCURRENT_REQUESTS": "200",
    **RAISED_LIMITS,
}


def unreserved_port() -> int:
    """A free port that is not one the machine's own services may use."""
    while (port := free_port()) in RESERVED_PORTS:
        pass
    return port


def healthy(base: str) -> bool:
    """Whether GET /health says ok."""
    try:
        return requests.get(f"{base}/health", timeout=2).json().get("status") == "ok"
    except (requests.RequestException, ValueError):
        return False


def wait_healthy(base: str) -> None:
    """Until GET /health says ok (processes.NotReady after READY_TIMEOUT_S)."""
    processes.await_ready(
        lambda: healthy(base), READY_TIMEOUT_S, what=f"{base}/health", interval=0.5
    )


def model_entry() -> dict[str, Any]:
    """The model's table in the built-in registry (common/models.toml)."""
    return dict(tomllib.loads(BUILTIN_MODELS_FILE.read_text())["models"][MODEL])


def model_spec() -> ModelSpec:
    return ModelSpec(name=MODEL, **model_entry())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def write_models_file(path: Path, backend: str) -> Path:
    """A registry of only the model's entry, copied, with `backend` set."""
    lines = ["# written by bench/local_stack.py", f'[models."{MODEL}"]']
    lines += [f"{k} = {_toml_value(v)}" for k, v in (model_entry() | {"backend": backend}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class LocalService:
    """Context manager: Redis, the API and a worker in a temporary directory, then stopped.

    `env` is added to the service's environment (default: RAISED_LIMITS). With a `backend`,
    the worker gets MODELS_FILE naming a copy of the model's registry entry with that
    backend, and restart_worker starts one of another; without, the built-in registry.
    The worker consumes `queue` (cpu; gpu for bench/gpu.py).
    """

    def __init__(
        self,
        label: str = "bench",
        backend: str | None = None,
        env: Mapping[str, str] = RAISED_LIMITS,
        queue: str = "cpu",
    ) -> None:
        self.label = label
        self.queue = queue
        self._tmp = tempfile.TemporaryDirectory(prefix=f"embeddings-{label}-")
        self.dir = Path(self._tmp.name)
        self.port = unreserved_port()
        self.redis = RedisServer(data_dir=self.dir / "redis", port=unreserved_port(), persist=False)
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.backend = backend
        self.extra_env = dict(env)
        self.env: dict[str, str] = {}
        self._starts = 0
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_pid(self) -> int:
        """The gunicorn master's."""
        if self.api is None:
            raise RuntimeError("the service is not started")
        return self.api.pid

    @property
    def worker_pid(self) -> int:
        if self.worker is None:
            raise RuntimeError("the service is not started")
        return self.worker.pid

    @property
    def pids(self) -> tuple[int, int]:
        """The gunicorn master's and the Celery worker's."""
        return self.api_pid, self.worker_pid

    @property
    def client(self) -> redis.Redis:
        """A client of the service's Redis."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis.url)
        return self._client

    def describe(self) -> str:
        return f"service at {self.url}, redis at {self.redis.url}, logs in {self.dir}"

    def __enter__(self) -> LocalService:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.dir / f"{name}.log"
        return processes.spawn([sys.executable, "-m", *command], log, cwd=ROOT, env=env)

    def _await(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `probe` holds, failing fast if the API or the worker exits; NotReady with
        every log's tail."""
        running = [p for p in (self.api, self.worker) if p]
        try:
            processes.await_ready(probe, timeout, running, what, interval=0.25)
        except processes.NotReady as error:
            raise processes.NotReady(f"{error}\n{self.log_tails()}") from None

    def _start(self) -> None:
        self.redis.start()  # in a session of its own: Ctrl-C reaches the bench, not Redis
        self.env = dict(
            os.environ,
            PORT=str(self.port),
            HOST="127.0.0.1",
            REDIS_URL=self.redis.url,
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            **self.extra_env,
        )
        self.api = self._spawn("api", API.split(), self.env)
        self._start_worker(self.backend)
        self._await(lambda: healthy(self.url), READY_TIMEOUT_S, f"{self.url}/health")

    def _start_worker(self, backend: str | None) -> float:
        """Start a worker (of `backend`); seconds until its heartbeat names the model."""
        self._starts += 1
        name = f"worker-{backend or 'cpu'}-{self._starts}"
        env = self.env
        if backend:
            models = write_models_file(self.dir / f"models-{backend}.toml", backend)
            env = env | {"MODELS_FILE": str(models)}
        node = f"{self.label}-{backend or 'cpu'}-{self._starts}@%h"
        started = time.monotonic()
        command = [*worker_command(self.queue).split(), "-n", node, "--loglevel", "warning"]
        self.worker = self._spawn(name, command, env)
        self.backend = backend
        self._await(self._has_model, WORKER_START_TIMEOUT_S, f"{name} (loading {MODEL})")
        return time.monotonic() - started

    def _has_model(self) -> bool:
        """Whether the worker's heartbeat (common/presence.py) names the model."""
        worker = self.worker
        return worker is not None and any(
            info.get("pid") == worker.pid and MODEL in info.get("models", [])
            for info in map(json.loads, self.client.hvals(redis_keys.WORKERS))
        )

    def restart_worker(self, backend: str) -> float:
        """Stop the worker, start one of `backend`; seconds until it has the model."""
        processes.stop(self.worker, grace=STOP_TIMEOUT_S)
        self.worker = None
        return self._start_worker(backend)

    def kill_worker(self) -> float:
        """SIGKILL the worker (an OOM kill, a lost node) and start another at once; seconds
        until the new one has the model."""
        if self.worker is not None:
            self.worker.send_signal(signal.SIGKILL)
            self.worker.wait()
        return self._start_worker(self.backend)

    def log_tails(self, lines: int = 20) -> str:
        out = []
        for log in sorted(self.dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    def reset_batches(self) -> None:
        """Clear the worker's batch counters (workers/batch_stats.py)."""
        self.client.delete(redis_keys.batch_stats(MODEL))

    def read_batches(self) -> Counter[str]:
        time.sleep(0.3)  # the worker writes its figures within 0.1 s (workers/batch_stats.py)
        raw = self.client.hgetall(redis_keys.batch_stats(MODEL))
        return Counter({k.decode(): float(v) for k, v in raw.items()})

    def stop(self) -> None:
        """SIGTERM the worker and the API (kill what outlives the timeout), then Redis."""
        processes.stop(self.worker, self.api, grace=STOP_TIMEOUT_S)
        if self._client is not None:
            self._client.close()
        self.redis.stop()
        self._tmp.cleanup()
