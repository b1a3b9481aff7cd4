"""What a person sees, in headless Chromium (Debian's package): Flower's workers page
behind basic auth lists the running worker, and the API docs page renders every route.
Screenshots are saved in the test's tmp dir."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from common import presence
from tests.conftest import start_flower, stop
from tests.helpers import wait_until

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium",
)
FLOWER_USER, FLOWER_PASSWORD = "admin", f"pw-{uuid.uuid4().hex[:12]}"


def chromium(tmp_path: Path, url: str, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (or a screenshot of it): a fresh profile each
    time, and nothing that reaches beyond this machine."""
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-quic", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / f'profile-{uuid.uuid4().hex}'}",
        "--window-size=1280,1000", "--virtual-time-budget=8000",
        f"--screenshot={screenshot}" if screenshot else "--dump-dom", url,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def saved_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 10_000, "a blank page?"
    print(f"screenshot: {path}")


@pytest.fixture
def flower(redis_url: str, worker: None, tmp_path: Path) -> Iterator[str]:
    """Flower as deployed outside local development: behind basic auth from the environment."""
    auth = f"{FLOWER_USER}:{FLOWER_PASSWORD}"
    process, url = start_flower(redis_url, tmp_path / "flower.log", FLOWER_BASIC_AUTH=auth)
    yield url
    stop(process)


def test_flower_shows_the_running_worker_behind_basic_auth(
    flower: str, redis_url: str, tmp_path: Path
) -> None:
    assert requests.get(f"{flower}/workers", timeout=10).status_code == 401
    name = next(
        w.name
        for w in presence.online(redis.Redis.from_url(redis_url))
        if w.name.startswith("test@")
    )
    page = flower.replace("://", f"://{FLOWER_USER}:{FLOWER_PASSWORD}@") + "/workers"
    # Flower learns of workers from Celery events and inspect replies: give it time.
    dom = wait_until(lambda: chromium(tmp_path, page), lambda dom: name in dom, 45, 1)
    assert "Online" in dom
    shot = tmp_path / "flower-workers.png"
    chromium(tmp_path, page, screenshot=shot)
    saved_png(shot)


def test_api_docs_page_renders_the_routes(live_api: str, tmp_path: Path) -> None:
    dom = chromium(tmp_path, f"{live_api}/docs")
    assert "Embeddings service" in dom
    for path in ("/api/v1/embeddings", "/api/v1/jobs/{job_id}", "/api/v1/index-jobs", "/readyz"):
        assert f'data-path="{path}"' in dom, path
    shot = tmp_path / "api-docs.png"
    chromium(tmp_path, f"{live_api}/docs", screenshot=shot)
    saved_png(shot)
