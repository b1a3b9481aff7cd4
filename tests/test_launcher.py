"""The README's first command: the whole system from one process, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from cli.redis_server import free_port
from tests.conftest import ROOT


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children in sessions of their own included)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            kids = [int(k) for k in (task / "children").read_text().split()]
            found += kids
            todo += kids
    return found


def test_up_runs_redis_api_worker_and_flower_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    api_port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # embedded Redis
    env |= {"PORT": str(api_port), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "up.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--flower-port", str(flower_port),
         "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # SIGINT ignored, as a script's `&` starts it: Ctrl-C must still stop everything.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "ready." not in (tmp_path / "up.log").read_text():
            assert process.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.5)
        output = (tmp_path / "up.log").read_text()
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
    output = (tmp_path / "up.log").read_text()
    assert "stopping" in output
    assert "Traceback" not in output
    assert [pid for pid in started if Path(f"/proc/{pid}").exists()] == []
    for port in (api_port, flower_port):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            raise AssertionError(f"port {port} still answers")
        except requests.ConnectionError:
            pass
