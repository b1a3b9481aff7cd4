"""GET /health: quick, from Redis; 503 while Redis is down, 200 again once it is back."""

from __future__ import annotations

import time
from pathlib import Path

from flask.testing import FlaskClient

from api.app import create_app
from cli.redis_server import RedisServer
from common.settings import Settings, load_settings
from tests.conftest import MODEL


def test_health_reports_redis_workers_models_and_cache(client: FlaskClient) -> None:
    started = time.perf_counter()
    response = client.get("/health")
    assert time.perf_counter() - started < 0.5
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["redis"]["ok"] is True
    assert body["queues"]["cpu"]["workers"] >= 1
    assert set(body["queues"]) == {"cpu", "gpu", "remote", "cpu-bulk", "gpu-bulk", "remote-bulk"}
    assert any(w["name"].startswith("test@") and MODEL in w["models"] for w in body["workers"])
    assert {m["id"]: m["available"] for m in body["models"]}[MODEL] is True
    assert set(body["cache"]) == {"entries", "hits", "misses", "hit_ratio"}


def test_models_endpoint(client: FlaskClient) -> None:
    body = client.get("/api/v1/models").get_json()
    model = next(m for m in body["data"] if m["id"] == MODEL)
    assert model["dimensions"] == 384
    assert model["max_tokens"] == 256
    assert model["provider"] == "local"
    assert model["default"] is True


def test_health_follows_redis_down_and_back(tmp_path: Path, settings: Settings) -> None:
    server = RedisServer(tmp_path / "redis", persist=False).start()
    try:
        app = create_app(load_settings(**{**settings.model_dump(), "REDIS_URL": server.url}))
        client = app.test_client()
        assert client.get("/health").status_code == 200
        assert client.get("/health").get_json()["status"] == "degraded"  # no worker on it
        server.stop()
        down = client.get("/health")
        assert down.status_code == 503
        assert down.get_json()["status"] == "down"
        assert down.get_json()["redis"]["ok"] is False
        refused = client.post("/api/v1/jobs", json={"input": "x"})
        assert refused.status_code == 503
        assert refused.get_json()["error"]["type"] == "service_unavailable"
        server.start()
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/health").status_code == 200
    finally:
        server.stop()
