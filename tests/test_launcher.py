"""The README's first command: the whole system from one process, stopped by Ctrl-C; and
what it checks before anything starts (its run directory, its ports, Redis's data).

One stack runs for the module (started after a SIGKILLed launcher on the same run
directory); the Ctrl-C test, last, stops it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from cli import locks, processes, readiness
from cli.launcher import Stack
from cli.redis_server import DataDirInUse, RedisServer, free_port
from cli.supervisor import Child, Supervisor
from common.redis_client import connect
from common.settings import load_settings
from tests.conftest import ROOT
from tests.helpers import wait_until

REFUSED_WITHIN_SECONDS = 5


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children in sessions of their own included)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except FileNotFoundError:  # the task ended meanwhile
                continue
            found += kids
            todo += kids
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie may wait long for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def up_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # embedded Redis
    return env | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def up_args(flower_port: int, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cli", "up", "--flower-port", str(flower_port),
            "--run-dir", str(run_dir)]  # fmt: skip


def launch(
    log: Path, run_dir: Path, api_port: int, flower_port: int, **env: str
) -> subprocess.Popen[bytes]:
    return processes.spawn(
        up_args(flower_port, run_dir), log, cwd=ROOT, env=up_env(PORT=str(api_port), **env),
        # SIGINT ignored, as a script's `&` starts it: Ctrl-C must still stop everything.
        preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip


def wait_for(text: str, log: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until `log` holds `text`; NotReady if `process` exits first."""
    what = f"{text!r} in {log.name}"
    processes.await_ready(lambda: text in log.read_text(), timeout, [process], what, log)


def refused(run_dir: Path, api_port: int, flower_port: int) -> str:
    """Run `up`, which must refuse at once: its one line of output."""
    started = time.monotonic()
    done = subprocess.run(
        up_args(flower_port, run_dir), cwd=ROOT, env=up_env(PORT=str(api_port)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0, output
    assert time.monotonic() - started < REFUSED_WITHIN_SECONDS, output
    assert len(output.splitlines()) == 1, output
    return output


def mentioning(text: str) -> set[int]:
    """The pids of the processes whose command line mentions `text`."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    log: Path
    run_dir: Path
    api_port: int
    flower_port: int
    killed_pid: int
    lock_text_before: str

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def redis_url(self) -> str:
        line = next(x for x in self.log.read_text().splitlines() if x.startswith("redis "))
        return line.split()[1]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """A ready stack, started on the run directory and ports of a launcher that was
    SIGKILLed once it had started everything (its lock file still names it)."""
    tmp = tmp_path_factory.mktemp("up")
    run_dir, api_port, flower_port = tmp / "run", free_port(), free_port()
    crashed = launch(tmp / "crashed.log", run_dir, api_port, flower_port)
    try:
        wait_for("flower  http", tmp / "crashed.log", crashed, 120)  # every child started
        orphans = descendants(crashed.pid)
    finally:
        crashed.kill()
        crashed.wait()
    # They get SIGTERM as their parent dies.
    wait_until(lambda: [pid for pid in orphans if alive(pid)], lambda left: not left, 60, 0.2)
    lock_text = (run_dir / "up.lock").read_text()

    process = launch(tmp / "up.log", run_dir, api_port, flower_port)
    stack = Up(process, tmp / "up.log", run_dir, api_port, flower_port, crashed.pid, lock_text)
    try:
        wait_for("ready.", stack.log, process, 180)
        yield stack
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(60)


def test_a_start_after_a_sigkilled_launcher_succeeds(up: Up) -> None:
    assert up.lock_text_before.strip() == str(up.killed_pid)  # stale, and no obstacle
    assert (up.run_dir / "up.lock").read_text().strip() == str(up.process.pid)
    wait_until(  # a heartbeat may be late on two busy cores
        lambda: requests.get(f"{up.api}/health", timeout=10).json()["status"],
        lambda status: status == "ok",
        30,
        0.5,
    )


def test_a_second_start_on_the_same_run_dir_is_refused(up: Up) -> None:
    running = mentioning(str(up.run_dir))  # the launcher and its Redis
    line = refused(up.run_dir, free_port(), free_port())
    assert line == (
        f"embeddings: already running (pid {up.process.pid}); stop it, or use --run-dir"
    )
    assert mentioning(str(up.run_dir)) == running
    assert up.process.poll() is None
    assert requests.get(f"{up.api}/health", timeout=10).json()["status"] == "ok"


def test_a_busy_api_port_is_refused(up: Up, tmp_path: Path) -> None:
    line = refused(tmp_path / "run", up.api_port, free_port())
    assert f"port {up.api_port} (API) is in use" in line
    assert "set PORT" in line
    assert not (tmp_path / "run" / "redis").exists()


def test_a_busy_flower_port_is_refused(up: Up, tmp_path: Path) -> None:
    api_port = free_port()
    line = refused(tmp_path / "run", api_port, up.flower_port)
    assert f"port {up.flower_port} (Flower) is in use" in line
    assert "--flower-port" in line
    assert not (tmp_path / "run" / "redis").exists()
    with pytest.raises(requests.ConnectionError):  # the API port it had taken is let go
        requests.get(f"http://127.0.0.1:{api_port}/health", timeout=2)


def test_redis_data_dir_in_use_is_refused(up: Up, tmp_path: Path) -> None:
    with pytest.raises(DataDirInUse, match="in use by another redis-server"):
        RedisServer(up.run_dir / "redis", persist=False).start()
    # Another run directory whose Redis data is the running one's: refused, nothing started.
    other = tmp_path / "run"
    other.mkdir()
    (other / "redis").symlink_to(up.run_dir / "redis")
    done = subprocess.run(
        up_args(free_port(), other), cwd=ROOT, env=up_env(PORT=str(free_port())),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0
    assert "is in use by another redis-server" in output.splitlines()[-1], output
    assert "ready." not in output
    assert up.process.poll() is None


def test_readiness_is_this_launchs_own(up: Up, tmp_path: Path) -> None:
    """A healthy service answering where a launch looks is not that launch being ready."""
    client = connect(up.redis_url)
    worker = next(pid for pid in descendants(up.process.pid)
                  if b"\0worker\0" in Path(f"/proc/{pid}/cmdline").read_bytes())  # fmt: skip
    assert readiness.ready(up.api, client, [worker])
    sleepers = {name: subprocess.Popen(["sleep", "60"]) for name in ("api", "worker-cpu")}
    try:
        stack = Stack(load_settings(REDIS_URL=up.redis_url), tmp_path, free_port(), False)
        stack.api_url, stack.redis_url, stack.children = up.api, up.redis_url, sleepers
        assert not stack.wait_ready(timeout=3)
    finally:
        for sleeper in sleepers.values():
            sleeper.kill()
            sleeper.wait()


def test_a_foreign_server_on_the_api_port_is_refused_not_taken_for_ready(tmp_path: Path) -> None:
    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "workers": [{"name": "cpu@elsewhere"}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    foreign = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)  # loopback only: still refused
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        port = foreign.server_address[1]
        line = refused(tmp_path / "run", port, free_port())
        assert f"port {port} (API) is in use" in line
    finally:
        foreign.shutdown()
        foreign.server_close()


def test_two_redis_servers_never_share_a_data_dir(tmp_path: Path) -> None:
    first = RedisServer(tmp_path / "redis").start()
    try:
        with pytest.raises(DataDirInUse, match=rf"\(pid {first.process.pid}\)"):
            RedisServer(tmp_path / "redis").start()
    finally:
        first.stop()
    second = RedisServer(tmp_path / "redis").start()  # free again once the first has exited
    second.stop()


def child_pid(up: Up, marker: bytes) -> int:
    """The pid of the launcher's descendant whose command line holds `marker`."""
    return next(pid for pid in descendants(up.process.pid)
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes())  # fmt: skip


def sync_call_succeeds(up: Up, timeout: float) -> None:
    """A text no one has sent yet (so a worker embeds it) answers 200 within `timeout`."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            text = f"after a restart, at {time.time()}"
            answer = requests.post(f"{up.api}/api/v1/embeddings", json={"input": text}, timeout=30)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:300]}"
        except requests.RequestException as error:
            last = repr(error)
        time.sleep(1)
    raise AssertionError(f"no sync call succeeded in {timeout}s: {last}")


def test_a_killed_worker_then_a_killed_redis_are_started_again(up: Up) -> None:
    """No one restarts anything by hand: the launcher does, and the API and the worker
    reconnect to the Redis it started again on the same port and data directory."""
    worker = child_pid(up, b"\0worker\0")
    os.kill(worker, signal.SIGKILL)
    wait_for("worker-cpu killed by SIGKILL; starting it again in 1 s", up.log, up.process, 30)
    sync_call_succeeds(up, 180)
    assert child_pid(up, b"\0worker\0") != worker

    server = child_pid(up, b"redis-server")
    os.kill(server, signal.SIGKILL)
    wait_for("redis killed by SIGKILL; starting it again in 1 s", up.log, up.process, 30)
    sync_call_succeeds(up, 180)
    assert child_pid(up, b"redis-server") != server  # and the API's REDIS_URL still holds
    assert up.process.poll() is None
    assert up.log.read_text().count("starting it again") == 2  # one line each


def test_what_keeps_dying_is_started_again_ever_later(capsys: pytest.CaptureFixture[str]) -> None:
    """The delay doubles while a process dies young, one line each time."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        started.append(subprocess.Popen(["sh", "-c", "exit 3"]))

    start()
    supervisor = Supervisor([Child("quitter", lambda: started[-1].poll(), start)])
    deadline = time.monotonic() + 5  # it dies at once: again after 1 s, 2 s, 4 s...
    while time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.05)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "quitter exited with 3; starting it again in 1 s",
        "quitter exited with 3; starting it again in 2 s",
        "quitter exited with 3; starting it again in 4 s",
    ]
    assert len(started) == 3
    for process in started:
        process.wait()


def test_up_runs_redis_api_worker_and_flower_and_stops_on_ctrl_c(up: Up) -> None:
    """Last: it stops the module's stack."""
    process, api_port, flower_port = up.process, up.api_port, up.flower_port
    try:
        output = up.log.read_text()
        assert f"http://localhost:{api_port}" in output
        assert f"http://127.0.0.1:{flower_port}" in output
        answer = requests.post(
            f"http://127.0.0.1:{api_port}/api/v1/embeddings", json={"input": "hi"}, timeout=30
        )
        assert answer.status_code == 200
        assert len(answer.json()["data"][0]["embedding"]) == 384
        flower = requests.get(f"http://127.0.0.1:{flower_port}/workers", timeout=10)
        assert flower.status_code == 200
        started = descendants(process.pid)
        assert len(started) >= 4  # redis, gunicorn (+ its workers), a worker, flower
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        process.wait(60)
    assert process.returncode == 0
    output = up.log.read_text()
    assert "stopping" in output
    # Not while starting, nor while stopping. (In between, a test above killed Redis, and
    # Celery logs its consumer's lost connection with tracebacks.)
    assert "Traceback" not in output[: output.index("ready.")]
    assert "Traceback" not in output[output.index("stopping") :]
    assert "Connection in use" not in output
    assert [pid for pid in started if Path(f"/proc/{pid}").exists()] == []
    for port in (api_port, flower_port):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            raise AssertionError(f"port {port} still answers")
        except requests.ConnectionError:
            pass
    os.close(locks.hold(up.run_dir / "up.lock"))  # both locks let go
    RedisServer(up.run_dir / "redis").start().stop()
