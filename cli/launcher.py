"""`embeddings up`: the whole system on one machine (Redis, API, a worker, Flower).

Before anything starts: one launcher per run directory (a lock on `<run_dir>/up.lock`),
the API's port taken (the launcher binds it and hands the socket to gunicorn) and Flower's
port free. Ready means this launch's API answers on that socket and lists its own workers.
Once ready, it starts again whatever of its own dies (cli/supervisor.py).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from cli import locks, ports, processes, readiness
from cli.redis_server import DataDirInUse, RedisServer, free_port, maxmemory_bytes
from cli.supervisor import Child, Supervisor
from common import logs
from common.api_keys import KeyStore
from common.providers import REMOTE, missing_setting
from common.redis_client import connect, tls_options
from common.registry import load_registry
from common.settings import Settings, SettingsError, load_settings, masked_url

READY_TIMEOUT_SECONDS = 180
STOP_GRACE_SECONDS = 30

API_PORT_CHANGE = "set PORT to another port (HOST: the address)"
FLOWER_PORT_CHANGE = "use --flower-port (FLOWER_PORT)"


def flower_command(port: int) -> list[str]:
    """Flower on 127.0.0.1 (it reads FLOWER_BASIC_AUTH and its other options from FLOWER_*
    variables; its broker page takes REDIS_URL's TLS from the Celery app's broker_use_ssl)."""
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower",
            f"--port={port}", "--address=127.0.0.1"]  # fmt: skip


@dataclass
class Stack:
    settings: Settings
    run_dir: Path
    flower_port: int
    gpu_worker: bool
    api_socket: socket.socket | None = None
    """Bound and listening, for gunicorn (ports.listen); None: gunicorn binds HOST:PORT."""
    redis: RedisServer | None = None
    redis_url: str = ""
    api_url: str = ""
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    spawn_args: dict[str, tuple[list[str], dict]] = field(default_factory=dict)
    """What each child was started with: to start it again the same way."""

    def commands(self) -> dict[str, list[str]]:
        celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
        level = self.settings.LOG_LEVEL
        api = [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"]
        if self.api_socket:  # the command line's bind overrides the config file's
            api += ["--bind", f"fd://{self.api_socket.fileno()}"]
        cmds = {
            "api": api,
            "worker-cpu": [
                *celery, "worker", "-Q", "cpu", "--pool", "threads", "--concurrency", "16",
                "-n", "cpu@%h", "--loglevel", level,
            ],
            "flower": flower_command(self.flower_port),
        }  # fmt: skip
        if self.gpu_worker:
            cmds["worker-gpu"] = [
                *celery, "worker", "-Q", "gpu", "--pool", "threads", "--concurrency", "16",
                "-n", "gpu@%h", "--loglevel", level,
            ]  # fmt: skip
        if any(missing_setting(self.settings, p) is None for p in REMOTE):
            # Provider calls wait on the network: many threads, apart from the local models.
            cmds["worker-remote"] = [
                *celery, "worker", "-Q", "remote", "--pool", "threads", "--concurrency", "32",
                "-n", "remote@%h", "--loglevel", level,
            ]  # fmt: skip
        return cmds

    def start(self) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   PYTHONUNBUFFERED="1")  # fmt: skip
        # Readable lines when we run in a terminal (JSON otherwise), whatever the children's
        # own stderr turns out to be.
        env["LOG_FORMAT"] = logs.resolve_format(self.settings.LOG_FORMAT)
        if "REDIS_URL" not in os.environ:
            memory = maxmemory_bytes(self.settings.REDIS_MAXMEMORY)
            self.redis = RedisServer(self.run_dir / "redis", maxmemory=memory).start()
            env["REDIS_URL"] = self.redis.url
            print(f"redis   {self.redis.url}  (embedded, data in {self.redis.data_dir}, "
                  f"maxmemory {memory // 2**20} MiB)")  # fmt: skip
        else:
            print(f"redis   {masked_url(env['REDIS_URL'])}  (external)")
        self.redis_url = env["REDIS_URL"]
        self.api_url = (
            ports.local_url(self.api_socket)
            if self.api_socket
            else f"http://127.0.0.1:{self.settings.PORT}"
        )
        root = Path(__file__).resolve().parent.parent
        host = "localhost" if self.settings.HOST in ("0.0.0.0", "::") else self.settings.HOST
        metrics: list[str] = []
        for name, cmd in self.commands().items():
            child_env, extra = env, {}
            if name == "api" and self.api_socket:
                extra = {"pass_fds": (self.api_socket.fileno(),)}
            if name.startswith("worker-") and os.environ.get("WORKER_METRICS_PORT") != "0":
                port = free_port()  # one per worker; WORKER_METRICS_PORT=0 turns them off
                child_env = dict(env, WORKER_METRICS_PORT=str(port))
                metrics.append(f"{name} http://{host}:{port}/metrics")
            self.spawn_args[name] = (cmd, dict(env=child_env, cwd=root, **extra))
            self.respawn(name)
        print(f"api     http://{host}:{self.settings.PORT}  (health: /health, docs: /docs)")
        print(f"metrics http://{host}:{self.settings.PORT}/metrics (api)", *metrics, sep="  ")
        self._say_auth(env["REDIS_URL"])
        if os.environ.get("FLOWER_BASIC_AUTH"):
            print(f"flower  http://127.0.0.1:{self.flower_port}  (login: FLOWER_BASIC_AUTH)")
        else:
            print(
                f"flower  http://127.0.0.1:{self.flower_port}  (open, local development only: "
                "set FLOWER_BASIC_AUTH=user:password to require a login)"
            )

    def respawn(self, name: str) -> None:
        cmd, options = self.spawn_args[name]
        self.children[name] = processes.spawn(cmd, **options)

    def supervise(self) -> None:
        """Run till Ctrl-C, starting again any child, or the embedded Redis (on its port and
        data directory), that dies (cli/supervisor.py)."""
        watched = [
            Child(name, lambda name=name: self.children[name].poll(),
                  lambda name=name: self.respawn(name))
            for name in self.children
        ]  # fmt: skip
        if self.redis:
            redis_server = self.redis
            watched.append(Child("redis", lambda: redis_server.process.poll(), redis_server.start))
        supervisor = Supervisor(watched)
        while True:
            time.sleep(0.5)
            supervisor.check()

    def _say_auth(self, redis_url: str) -> None:
        try:
            keyed = KeyStore(connect(redis_url, tls=tls_options(self.settings))).auth_on()
        except redis.RedisError:
            keyed = False
        if keyed or self.settings.AUTH_REQUIRED:
            print("auth    on: calls need an API key "
                  "(embeddings keys create --name ... --role admin|client)")  # fmt: skip
        else:
            print("auth    OFF (AUTH_REQUIRED=false, open mode for local use): the API is open "
                  "to anyone who can reach it until the first key is made, and closed for good "
                  "then (embeddings keys create --name ... --role admin)")  # fmt: skip

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> bool:
        """Whether this launch became ready: every child alive, its API (on the socket
        only it can answer on) reporting ok and listing its workers, known by their pids."""
        client = connect(self.redis_url, tls=tls_options(self.settings))
        workers = [p.pid for name, p in self.children.items() if name.startswith("worker-")]
        try:
            processes.await_ready(
                lambda: readiness.ready(self.api_url, client, workers), timeout,
                self.children.values(), "the system", interval=0.5,
            )  # fmt: skip
        except processes.NotReady:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM to every child (workers finish their tasks: warm shutdown), then Redis.
        Another Ctrl-C meanwhile cannot cut this short; what outlives 30 s is killed."""
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)
        if self.api_socket:  # gunicorn holds its own copy till it exits: the port stays taken
            self.api_socket.close()
        names = {process.pid: name for name, process in self.children.items()}
        for process in processes.stop(*self.children.values(), grace=STOP_GRACE_SECONDS):
            print(f"{names[process.pid]} did not stop in {STOP_GRACE_SECONDS} s: killed",
                  file=sys.stderr)  # fmt: skip
        if self.redis:
            self.redis.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _refuse(message: str) -> int:
    print(f"embeddings: {message}", file=sys.stderr)
    return 1


def _port_trouble(error: OSError, port: int, what: str, change: str) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"port {port} ({what}) is in use; stop what holds it, or {change}"
    return f"cannot listen on port {port} ({what}): {error.strerror}; {change}"


def run(flower_port: int, gpu_worker: bool, run_dir: Path) -> int:
    """Checks first (run directory, settings, ports): nothing starts unless all pass."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = locks.hold(run_dir / "up.lock")  # held for our life; dropped when we die
    except locks.Held as held:
        return _refuse(f"already running (pid {held.pid or '?'}); stop it, or use --run-dir")
    try:
        return _run_locked(flower_port, gpu_worker, run_dir)
    finally:
        os.close(lock)


def _run_locked(flower_port: int, gpu_worker: bool, run_dir: Path) -> int:
    # One machine's own use: open until the first key is made, unless the caller says so.
    os.environ.setdefault("AUTH_REQUIRED", "false")
    try:
        settings = load_settings()
        load_registry(settings)
    except SettingsError as error:
        print(f"embeddings: {error}", file=sys.stderr)
        return 2
    try:
        api_socket = ports.listen(settings.HOST, settings.PORT)
    except OSError as error:
        return _refuse(_port_trouble(error, settings.PORT, "API", API_PORT_CHANGE))
    try:
        ports.check_free("127.0.0.1", flower_port)
    except OSError as error:
        api_socket.close()
        return _refuse(_port_trouble(error, flower_port, "Flower", FLOWER_PORT_CHANGE))
    stack = Stack(settings, run_dir, flower_port, gpu_worker, api_socket)
    # Stop as on Ctrl-C: on SIGINT even where a script's `&` started us with it ignored
    # (then Ctrl-C and `kill -INT` did nothing), on SIGTERM, and on SIGHUP unless nohup.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _interrupt)
    try:
        try:
            stack.start()
        except DataDirInUse as error:
            return _refuse(f"{error}; stop it, or use --run-dir")
        if not stack.wait_ready():
            print("the system did not become ready; see the logs above", file=sys.stderr)
            return 1
        print("ready. Ctrl-C stops everything.")
        stack.supervise()
        return 0
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        stack.stop()
