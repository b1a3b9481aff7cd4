"""Remote providers end to end: a real API, a real remote worker with the real `ollama` and
`openai` clients, and local stub servers that speak Ollama's and OpenAI's wire formats and
fail on demand (429, 500, hang, malformed JSON, wrong dimensions, missing model)."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from common.errors import ModelNotFound
from common.queueing import make_celery
from common.registry import load_registry
from common.settings import Settings, SettingsError, load_settings
from tests.conftest import start_worker, stop, wait_for_worker
from tests.helpers import wait_job, wait_until
from tests.stubs.ollama_stub import OllamaStub
from tests.stubs.openai_stub import OpenAIStub
from tests.stubs.server import vector
from workers.providers.resilience import retry_after
from workers.remote import plan_calls

URL = "/api/v1/embeddings"
KEY = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"
NO_STORE = {"Cache-Control": "no-store"}
MODELS = """
[models."nomic-embed-text"]
provider = "ollama"
target = "nomic-embed-text"
dimensions = 768
max_tokens = 8192
batch_size = 64

[models."mxbai-embed-large"]
provider = "ollama"
target = "mxbai-embed-large"
dimensions = 1024
max_tokens = 512

[models.learned]
provider = "ollama"
target = "learned-model"
max_tokens = 512

[models."te3-256"]
provider = "openai"
target = "text-embedding-3-small"
dimensions = 256
supports_dimensions = true
max_tokens = 8191
batch_size = 2048

[models.tiny]
provider = "openai"
target = "tiny-embed"
dimensions = 8
max_tokens = 512
batch_size = 2048

[any_ollama_model]
max_tokens = 2048
"""
ENV = {
    "DEFAULT_MODEL": "nomic-embed-text",
    "OPENAI_API_KEY": KEY,
    "PROVIDER_TIMEOUT_SECONDS": "1",
    "PROVIDER_MAX_RETRIES": "2",
    "PROVIDER_RETRY_BACKOFF_SECONDS": "0.05",
    "PROVIDER_RETRY_MAX_WAIT_SECONDS": "3",
    "PROVIDER_BREAKER_FAILURES": "3",
    "PROVIDER_BREAKER_OPEN_SECONDS": "2",
    "GPU_ENABLED": "false",
}


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaStub]:
    stub = OllamaStub(pulled=["nomic-embed-text", "learned-model", "all-minilm:33m"]).start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def openai_stub() -> Iterator[OpenAIStub]:
    stub = OpenAIStub(api_key=KEY).start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, ollama: OllamaStub, openai_stub: OpenAIStub
) -> dict[str, str]:
    models = tmp_path_factory.mktemp("providers") / "models.toml"
    models.write_text(MODELS)
    return ENV | {
        "MODELS_FILE": str(models),
        "OLLAMA_URL": ollama.url,
        "OPENAI_BASE_URL": f"{openai_stub.url}/v1",
    }


@pytest.fixture(scope="module")
def worker_log(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[Path]:
    """A remote worker (-Q remote, threads) pointed at the stubs."""
    # Other tests park messages on the remote queue on purpose (no worker there): drop them.
    redis.Redis.from_url(redis_url).delete("remote")
    log_path = tmp_path_factory.mktemp("remote-worker") / "worker.log"
    process = start_worker(redis_url, log_path, queues="remote", name="remote", **env)
    wait_for_worker(redis_url, process, log_path, "remote", timeout=60)
    yield log_path
    stop(process)


@pytest.fixture(scope="module")
def provider_app(settings: Settings, env: dict[str, str]) -> Flask:
    return create_app(load_settings(**{**settings.model_dump(), **env, "MAX_INPUTS": 6000}))


@pytest.fixture
def api(
    provider_app: Flask,
    worker_log: Path,
    ollama: OllamaStub,
    openai_stub: OpenAIStub,
    redis_url: str,
) -> FlaskClient:
    """A client of the API; stubs answering well, breakers and last errors forgotten."""
    ollama.reset()
    openai_stub.reset()
    client = redis.Redis.from_url(redis_url)
    stale = [*client.scan_iter("emb:provider:*:breaker:*"), *client.scan_iter("emb:model:*")]
    if stale:
        client.delete(*stale)
    for provider in ("ollama", "openai"):
        client.hdel(f"emb:provider:{provider}", "error_at", "error", "outage")
    return provider_app.test_client()


def fresh(n: int = 1, tag: str = "") -> list[str]:
    stamp = time.monotonic_ns()
    return [f"text {tag} {stamp} #{i}" for i in range(n)]


def rows(body: dict) -> np.ndarray:
    out = []
    for item in body["data"]:
        e = item["embedding"]
        raw = base64.b64decode(e) if isinstance(e, str) else None
        out.append(np.frombuffer(raw, "<f4") if raw else np.asarray(e, np.float32))
    return np.stack(out)


def post(api: FlaskClient, model: str, texts: list[str], **extra: object):  # type: ignore[no-untyped-def]
    body = {"model": model, "input": texts, "normalize": False, **extra}
    return api.post(URL, json=body, headers=NO_STORE)


def error_of(response, status: int, kind: str, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["type"] == kind, error
    for word in words:
        assert word in error["message"], error
    return error["message"]


# --- success: sync, async, cache, splitting, wire format ------------------------------------


def test_ollama_vectors_in_order_then_served_from_the_cache(
    api: FlaskClient, ollama: OllamaStub
) -> None:
    texts = fresh(3, "ollama")
    texts.append(texts[0])  # a repeat is embedded once
    first = api.post(URL, json={"input": texts, "normalize": False})  # DEFAULT_MODEL
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.headers["X-Cache"] == "miss"
    body = first.get_json()
    assert body["model"] == "nomic-embed-text"
    assert body["dimensions"] == 768
    expected = np.stack([vector(t, 768) for t in texts])
    np.testing.assert_array_equal(rows(body), expected)
    assert ollama.count("/api/embed") == 1
    sent = ollama.bodies("/api/embed")[0]
    assert sent["model"] == "nomic-embed-text"
    assert sent["input"] == texts[:3]
    assert sent["truncate"] is True and sent["keep_alive"] == "5m"
    assert "dimensions" not in sent

    again = api.post(URL, json={"input": texts, "normalize": False})
    assert again.status_code == 200
    assert again.headers["X-Cache"] == "hit"
    np.testing.assert_array_equal(rows(again.get_json()), expected)
    assert ollama.count("/api/embed") == 1  # the stub was not called again


def test_openai_async_job_sends_base64_dimensions_and_the_key(
    api: FlaskClient, openai_stub: OpenAIStub
) -> None:
    texts = fresh(2, "openai")
    submitted = api.post("/api/v1/jobs", json={"model": "te3-256", "input": texts})
    assert submitted.status_code == 202
    url = submitted.get_json()["status_url"]
    job = wait_job(lambda: api.get(url).get_json(), timeout=15, interval=0.05)
    assert job["status"] == "succeeded", job
    got = rows(job["result"])
    assert got.shape == (2, 256)
    expected = np.stack([vector(t, 256) for t in texts])
    np.testing.assert_allclose(got, expected, atol=1e-6)  # normalized again: unit already
    sent = openai_stub.seen[-1]
    assert sent.body == {
        "model": "text-embedding-3-small", "input": texts, "dimensions": 256,
        "encoding_format": "base64",
    }  # fmt: skip
    assert sent.headers["authorization"] == f"Bearer {KEY}"


def test_openai_splits_5000_inputs_into_calls_of_2048(
    api: FlaskClient, openai_stub: OpenAIStub
) -> None:
    texts = fresh(5000, "split")
    response = post(api, "tiny", texts, encoding_format="base64")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert [len(body["input"]) for body in openai_stub.bodies("/v1/embeddings")] == [
        2048, 2048, 904,
    ]  # fmt: skip
    expected = np.stack([vector(t, 8) for t in texts])
    np.testing.assert_array_equal(rows(response.get_json()), expected)


def test_truncate_cuts_long_texts_for_openai(api: FlaskClient, openai_stub: OpenAIStub) -> None:
    long = "word " * 2000  # ~2500 estimated tokens; the model takes 512
    assert post(api, "tiny", [long]).status_code == 200
    assert len(openai_stub.bodies("/v1/embeddings")[-1]["input"][0]) == 512 * 3
    response = post(api, "tiny", [long], truncate=False)
    error_of(response, 400, "invalid_request_error", "512")  # refused before any call
    assert openai_stub.count("/v1/embeddings") == 1


def test_any_pulled_ollama_model_learns_its_dimensions(
    api: FlaskClient, ollama: OllamaStub
) -> None:
    texts = fresh(2, "learned")
    response = post(api, "learned", texts)
    assert response.status_code == 200, response.get_data(as_text=True)
    np.testing.assert_array_equal(rows(response.get_json()), [vector(t, 16) for t in texts])
    models = {m["id"]: m for m in api.get("/api/v1/models").get_json()["data"]}
    assert models["learned"]["dimensions"] == 16  # learned from the first answer
    # `ollama/<name>` serves any pulled model without a registry entry.
    response = post(api, "ollama/all-minilm:33m", texts)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["model"] == "ollama/all-minilm:33m"
    assert ollama.bodies("/api/embed")[-1]["model"] == "all-minilm:33m"


def test_bulk_index_job_on_a_remote_model(api: FlaskClient, ollama: OllamaStub) -> None:
    docs = [{"id": "a", "text": "first document"}, {"id": "b", "text": "second document"}]
    submitted = api.post(
        "/api/v1/index-jobs", json={"documents": docs, "model": "nomic-embed-text"}
    )
    assert submitted.status_code == 202, submitted.get_data(as_text=True)
    url = submitted.get_json()["status_url"]
    job = wait_job(lambda: api.get(url).get_json(), timeout=15, interval=0.05)
    assert job["status"] == "succeeded", job
    matrix = np.load(io.BytesIO(api.get(f"{url}/results?format=npy").data))
    assert matrix.shape == (2, 768)
    np.testing.assert_allclose(matrix[0], vector("first document", 768), atol=1e-6)
    assert ollama.count("/api/embed") >= 1


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["ollama", "openai"])
def test_429_with_retry_after_is_retried(
    api: FlaskClient, ollama: OllamaStub, openai_stub: OpenAIStub, provider: str
) -> None:
    stub, model, path = (
        (ollama, "nomic-embed-text", "/api/embed")
        if provider == "ollama"
        else (openai_stub, "tiny", "/v1/embeddings")
    )
    stub.behave("429")
    started = time.monotonic()
    response = post(api, model, fresh(2, "429"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert stub.count(path) == 2
    assert time.monotonic() - started >= 1.0  # waited the Retry-After: 1


def test_a_retry_after_longer_than_we_wait_fails_at_once(
    api: FlaskClient, openai_stub: OpenAIStub
) -> None:
    openai_stub.behave("429")
    openai_stub.retry_after = "60"  # past PROVIDER_RETRY_MAX_WAIT_SECONDS
    try:
        started = time.monotonic()
        response = post(api, "tiny", fresh(1, "later"))
    finally:
        openai_stub.retry_after = "1"
    error_of(response, 503, "provider_unavailable", "openai", "retry after 60 s")
    assert time.monotonic() - started < 2
    assert openai_stub.count("/v1/embeddings") == 1


def test_500_is_retried_then_a_502_names_the_provider(
    api: FlaskClient, openai_stub: OpenAIStub
) -> None:
    openai_stub.default = "500"
    response = post(api, "tiny", fresh(1, "500"))
    error_of(response, 502, "upstream_error", "openai", "HTTP 500")
    assert openai_stub.count("/v1/embeddings") == 3  # 1 + PROVIDER_MAX_RETRIES


def test_inspect_replies_name_a_running_task_by_its_summary_never_its_texts(
    api: FlaskClient, ollama: OllamaStub, settings: Settings
) -> None:
    """Flower's worker pages ask the workers what they hold (Celery's inspect commands)."""
    ollama.behave("hang")
    secret = fresh(1, "secret")
    job_id = api.post("/api/v1/jobs", json={"model": "nomic-embed-text", "input": secret})
    job_id = job_id.get_json()["id"]
    wait_until(lambda: ollama.count("/api/embed"), bool, 10)  # the task hangs in its call
    inspect = make_celery(settings).control.inspect(destination=[f"remote@{os.uname().nodename}"],
                                                    timeout=2)  # fmt: skip
    deadline = time.monotonic() + 10
    while not (running := [t for ts in (inspect.active() or {}).values() for t in ts]):
        assert time.monotonic() < deadline, "the job's task never showed as active"
        time.sleep(0.1)
    reserved = inspect.reserved() or {}
    assert running[0]["args"] == f"job {job_id}: 1 texts"  # the summary the API sent
    assert secret[0] not in json.dumps([running, reserved])
    job = wait_job(lambda: api.get(f"/api/v1/jobs/{job_id}").get_json(), timeout=15)
    assert job["error"]["type"] == "upstream_timeout"  # over before the next test's stub


def test_a_hang_past_the_timeout_is_a_504(api: FlaskClient, ollama: OllamaStub) -> None:
    ollama.behave("hang")
    started = time.monotonic()
    response = post(api, "nomic-embed-text", fresh(1, "hang"))
    error_of(response, 504, "upstream_timeout", "ollama", "1 s")
    assert time.monotonic() - started < 4  # PROVIDER_TIMEOUT_SECONDS=1; the stub hangs 5 s
    assert ollama.count("/api/embed") == 1  # a timeout is not retried


@pytest.mark.parametrize("provider", ["ollama", "openai"])
def test_malformed_json_is_a_502(
    api: FlaskClient, ollama: OllamaStub, openai_stub: OpenAIStub, provider: str
) -> None:
    stub, model = (ollama, "nomic-embed-text") if provider == "ollama" else (openai_stub, "tiny")
    stub.behave("malformed")
    error_of(post(api, model, fresh(1, "bad")), 502, "upstream_error", provider, "malformed")


@pytest.mark.parametrize("provider", ["ollama", "openai"])
def test_vectors_of_the_wrong_dimension_are_a_502(
    api: FlaskClient, ollama: OllamaStub, openai_stub: OpenAIStub, provider: str
) -> None:
    stub, model, dims = (
        (ollama, "nomic-embed-text", "768") if provider == "ollama" else (openai_stub, "tiny", "8")
    )
    stub.behave("wrong_dim")
    response = post(api, model, fresh(1, "dim"))
    error_of(response, 502, "upstream_error", provider, "3-dimensional", dims)


def test_a_model_not_pulled_says_ollama_pull(api: FlaskClient, ollama: OllamaStub) -> None:
    response = post(api, "mxbai-embed-large", fresh(1, "pull"))
    error_of(response, 404, "model_not_found", "`ollama pull mxbai-embed-large`")
    models = {m["id"]: m for m in api.get("/api/v1/models").get_json()["data"]}
    assert models["mxbai-embed-large"]["available"] is False
    assert "ollama pull mxbai-embed-large" in models["mxbai-embed-large"]["unavailable_reason"]
    assert models["nomic-embed-text"]["available"] is True
    assert models["te3-256"]["available"] is True


def test_input_the_provider_rejects_is_a_400(api: FlaskClient, openai_stub: OpenAIStub) -> None:
    openai_stub.behave("reject")
    response = post(api, "tiny", fresh(1, "reject"))
    error_of(response, 400, "invalid_request_error", "openai rejected the input", "context length")
    assert openai_stub.count("/v1/embeddings") == 1  # not retried


def breakers_open(api: FlaskClient) -> dict[str, float]:
    """embedding_provider_breaker_open per provider, from the API's /metrics."""
    text = api.get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "embedding_provider_breaker_open")  # fmt: skip
    return {s.labels["provider"]: s.value for s in family.samples}


def test_breaker_opens_fails_fast_and_closes_after_the_cool_down(
    api: FlaskClient, ollama: OllamaStub, openai_stub: OpenAIStub, worker_log: Path
) -> None:
    ollama.default = "500"
    for _ in range(3):  # PROVIDER_BREAKER_FAILURES calls, each retried twice
        error_of(post(api, "nomic-embed-text", fresh(1, "down")), 502, "upstream_error")
    assert ollama.count("/api/embed") == 9
    health = api.get("/health").get_json()
    assert health["providers"]["ollama"]["status"] == "down"
    assert health["providers"]["ollama"]["breaker"]["state"] == "open"
    assert health["status"] == "degraded"  # the default model's provider is down
    assert breakers_open(api) == {"ollama": 1, "openai": 0}  # what the alert rule reads

    started = time.monotonic()
    message = error_of(
        post(api, "nomic-embed-text", fresh(1, "fast")), 503, "provider_unavailable",
        "ollama", "circuit breaker open",
    )  # fmt: skip
    assert time.monotonic() - started < 1  # no provider call: the API reads the breaker
    assert ollama.count("/api/embed") == 9  # not called while open
    assert 1 <= int(api.post(URL, json={"input": "x"}).headers["Retry-After"]) <= 2
    assert "ollama" in message
    # The other provider is not held up.
    assert post(api, "tiny", fresh(1, "other")).status_code == 200

    ollama.default = "ok"
    time.sleep(2.1)  # PROVIDER_BREAKER_OPEN_SECONDS: then one trial call goes through
    texts = fresh(2, "back")
    response = post(api, "nomic-embed-text", texts)
    assert response.status_code == 200, response.get_data(as_text=True)
    np.testing.assert_array_equal(rows(response.get_json()), [vector(t, 768) for t in texts])
    providers = api.get("/health").get_json()["providers"]
    assert providers["ollama"]["status"] == "up"
    assert providers["ollama"]["breaker"]["state"] == "closed"
    assert breakers_open(api) == {"ollama": 0, "openai": 0}
    assert "breaker open" in worker_log.read_text()
    assert "breaker closed" in worker_log.read_text()


def test_the_api_key_never_reaches_a_client_or_the_log(
    api: FlaskClient, openai_stub: OpenAIStub, worker_log: Path
) -> None:
    openai_stub.behave("leak_key")  # a server that repeats the key in its error message
    response = post(api, "tiny", fresh(1, "leak"))
    message = error_of(response, 503, "provider_unavailable", "openai", "OPENAI_API_KEY")
    assert "***" in message
    bodies = [
        response.get_data(as_text=True),
        api.get("/health").get_data(as_text=True),
        api.get("/api/v1/models").get_data(as_text=True),
    ]
    assert not any(KEY in body for body in bodies)
    assert KEY not in worker_log.read_text()


def test_the_worker_still_serves_after_every_failure(api: FlaskClient) -> None:
    for model, dims in (("nomic-embed-text", 768), ("tiny", 8)):
        texts = fresh(2, "still")
        response = post(api, model, texts)
        assert response.status_code == 200, response.get_data(as_text=True)
        np.testing.assert_array_equal(rows(response.get_json()), [vector(t, dims) for t in texts])


def test_health_reports_each_provider(api: FlaskClient, settings: Settings) -> None:
    assert post(api, "tiny", fresh(1, "health")).status_code == 200
    providers = api.get("/health").get_json()["providers"]
    assert providers["openai"]["status"] == "up"
    assert providers["openai"]["last_ok_at"]
    assert providers["ollama"]["status"] == "up"
    assert "nomic-embed-text:latest" in providers["ollama"]["models"]  # from /api/tags
    assert set(providers) == {"local", "ollama", "openai"}
    # Without OLLAMA_URL and OPENAI_*: not configured, and a clear 503, not a start-up failure.
    bare = create_app(load_settings(**{**settings.model_dump(), "MODELS_FILE": None}))
    client = bare.test_client()
    providers = client.get("/health").get_json()["providers"]
    assert providers["ollama"]["status"] == providers["openai"]["status"] == "not_configured"
    response = client.post(URL, json={"model": "nomic-embed-text", "input": "x"})
    error_of(response, 503, "provider_unavailable", "ollama", "OLLAMA_URL")
    response = client.post(URL, json={"model": "text-embedding-3-small", "input": "x"})
    error_of(response, 503, "provider_unavailable", "openai", "OPENAI_API_KEY")
    models = {m["id"]: m for m in client.get("/api/v1/models").get_json()["data"]}
    assert "OLLAMA_URL" in models["nomic-embed-text"]["unavailable_reason"]


# --- pieces -------------------------------------------------------------------------------------


def test_registry_serves_remote_models_and_any_pulled_ollama_model(tmp_path: Path) -> None:
    registry = load_registry(load_settings(MODELS_FILE=None, DEFAULT_MODEL="nomic-embed-text"))
    nomic = registry.get(None)
    assert (nomic.provider, nomic.queue, nomic.dimensions) == ("ollama", "remote", 768)
    assert registry.get("text-embedding-3-small").supports_dimensions
    anything = registry.get("ollama/snowflake-arctic-embed:335m")
    assert (anything.provider, anything.target) == ("ollama", "snowflake-arctic-embed:335m")
    assert anything.dimensions is None and anything.queue == "remote"
    for bad in ("ollama/", "ollama/../etc", "ollama/a b"):
        with pytest.raises(ModelNotFound):
            registry.get(bad)
    assert load_registry(load_settings(DEFAULT_MODEL="ollama/bge-m3")).default == "ollama/bge-m3"
    path = tmp_path / "models.toml"
    path.write_text('[models.x]\nprovider = "local"\ntarget = "/x"\nmax_tokens = 8\n')
    with pytest.raises(SettingsError, match="x: dimensions is required for local models"):
        load_registry(load_settings(MODELS_FILE=str(path), DEFAULT_MODEL="x"))
    path.write_text('[models.x]\nprovider = "ollama"\ntarget = "x"\nmax_tokens = 8\n')
    only = load_registry(load_settings(MODELS_FILE=str(path), DEFAULT_MODEL="x"))
    with pytest.raises(ModelNotFound):  # no [any_ollama_model] table: the rule is off
        only.get("ollama/bge-m3")


def test_an_empty_provider_setting_means_not_configured() -> None:
    settings = load_settings(OLLAMA_URL=" ", OPENAI_API_KEY="", OPENAI_BASE_URL="")
    assert settings.OLLAMA_URL is settings.OPENAI_API_KEY is settings.OPENAI_BASE_URL is None
    assert KEY not in repr(load_settings(OPENAI_API_KEY=KEY))


def test_calls_respect_input_and_token_limits() -> None:
    assert plan_calls([1] * 5000, 2048, None) == [
        slice(0, 2048), slice(2048, 4096), slice(4096, 5000),
    ]  # fmt: skip
    assert plan_calls([100, 100, 100, 100], 10, 250) == [slice(0, 2), slice(2, 4)]
    assert plan_calls([500, 1], 10, 250) == [slice(0, 1), slice(1, 2)]  # too big goes alone
    assert plan_calls([], 10, None) == []


def test_retry_after_reads_seconds_milliseconds_and_dates() -> None:
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
