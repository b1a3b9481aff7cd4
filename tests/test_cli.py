"""The `embeddings` CLI against the API under gunicorn: embed, index (and re-attach), jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson

from cli.client import Client
from tests.conftest import ROOT


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_embed(live_api: str) -> None:
    done = cli(live_api, "embed", "hello", "world")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["data"]) == 2
    bad = cli(live_api, "embed", "x", "--model", "nope")
    assert bad.returncode != 0
    assert "404" in bad.stderr and "nope" in bad.stderr


def test_index_file_and_list_jobs(live_api: str, tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    docs = [{"id": f"d{i}", "text": f"document {i} " + "text " * (i * 40)} for i in range(30)]
    source.write_bytes(b"\n".join(orjson.dumps(d) for d in docs))
    output = tmp_path / "vectors.jsonl"
    done = cli(live_api, "index", str(source), "-o", str(output), "--max-tokens", "64")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stderr
    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert {r["id"] for r in rows} == {d["id"] for d in docs}
    assert len({(r["id"], r["chunk"]) for r in rows}) == len(rows) > len(docs)
    assert not (tmp_path / "vectors.jsonl.state").exists()
    listed = cli(live_api, "jobs")
    assert listed.returncode == 0
    job_id = Client(live_api).index_jobs(1)[0]["id"]
    assert job_id in listed.stdout


def test_reattach_to_a_job(live_api: str, tmp_path: Path) -> None:
    lines = b"\n".join(orjson.dumps({"id": i, "text": f"doc {i}"}) for i in range(5))
    job = Client(live_api).submit_index_job(lines, {})  # type: ignore[arg-type]
    output = tmp_path / "out.jsonl"
    done = cli(live_api, "index", "--job", job["id"], "-o", str(output))
    assert done.returncode == 0, done.stderr
    assert len(output.read_bytes().splitlines()) == 5
