"""Probes: /livez never touches Redis; /readyz needs Redis and a worker on the default
model's queue; the Kubernetes and Docker health checks use them."""

from __future__ import annotations

from pathlib import Path

import yaml
from flask.testing import FlaskClient

from api.app import create_app
from cli.redis_server import RedisServer, free_port
from common.settings import Settings, load_settings
from tests.conftest import MODEL, ROOT


def app_on(settings: Settings, redis_url: str) -> FlaskClient:
    return create_app(
        load_settings(**{**settings.model_dump(), "REDIS_URL": redis_url})
    ).test_client()


def test_ready_with_redis_and_a_worker(client: FlaskClient) -> None:
    live = client.get("/livez")
    assert (live.status_code, live.get_json()) == (200, {"status": "alive"})
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.get_json()
    assert (body["status"], body["default_model"], body["queue"]) == ("ready", MODEL, "cpu")
    assert body["workers"] >= 1


def test_not_ready_without_a_worker_on_the_queue(tmp_path: Path, settings: Settings) -> None:
    server = RedisServer(tmp_path / "redis", persist=False).start()
    try:
        client = app_on(settings, server.url)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["status"] == "not_ready"
        assert "no worker serves the 'cpu' queue" in ready.get_json()["reason"]
        assert ready.headers["Retry-After"] == "5"
        assert client.get("/livez").status_code == 200
    finally:
        server.stop()


def test_live_but_not_ready_while_redis_is_down(settings: Settings) -> None:
    client = app_on(settings, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert client.get("/livez").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["reason"].startswith("Redis does not answer")


def test_orchestrators_use_the_probes() -> None:
    deployment = yaml.safe_load((ROOT / "deploy/k8s/api-deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "/readyz" in compose["services"]["api"]["healthcheck"]["test"][-1]
    assert "/readyz" in (ROOT / "Dockerfile").read_text()
