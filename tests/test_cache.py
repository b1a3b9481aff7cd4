"""The two-tier cache: hits without a worker, partial hits, TTL, clearing, opt-out."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from common import redis_keys
from common.cache import EmbeddingCache
from common.settings import Settings, load_settings
from tests.conftest import MODEL, models_file

URL = "/api/v1/embeddings"


def fresh(n: int = 1) -> list[str]:
    """Texts no earlier test can have cached."""
    return [f"cache test text {uuid.uuid4().hex}" for _ in range(n)]


def embed(client: FlaskClient, texts: list[str], **headers: str):  # type: ignore[no-untyped-def]
    response = client.post(URL, json={"input": texts}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def app_with(settings: Settings, **overrides: object) -> Flask:
    return create_app(load_settings(**{**settings.model_dump(), **overrides}))


@pytest.fixture
def workerless_app(settings: Settings, tmp_path: Path) -> Flask:
    """The same model, routed to a queue that no worker consumes: only the cache can answer."""
    revision = "sentence-transformers/all-MiniLM-L6-v2@gt-0.1.0"
    models = models_file(tmp_path, name=MODEL, queue="nobody", revision=revision)
    return app_with(settings, MODELS_FILE=str(models), REQUEST_TIMEOUT_SECONDS=1.0)


def test_second_request_is_served_without_a_worker(
    client: FlaskClient, workerless_app: Flask
) -> None:
    texts = fresh(3)
    first = embed(client, texts)
    assert first.headers["X-Cache"] == "miss"
    other = workerless_app.test_client()  # another API process: empty LRU, shared Redis
    second = embed(other, texts)
    assert second.headers["X-Cache"] == "hit"
    assert second.get_json()["data"] == first.get_json()["data"]
    assert second.get_json()["usage"] == first.get_json()["usage"]
    assert other.post(URL, json={"input": fresh()}).status_code == 504  # truly no worker


def test_partial_hit_embeds_only_the_misses(client: FlaskClient) -> None:
    known, new = fresh(2), fresh(1)
    embed(client, known)
    before = client.get("/health").get_json()["cache"]
    mixed = embed(client, [known[0], *new, known[1]])
    assert mixed.headers["X-Cache"] == "partial"
    after = client.get("/health").get_json()["cache"]
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (2, 1)
    alone = embed(client, new, **{"Cache-Control": "no-store"}).get_json()["data"][0]
    np.testing.assert_allclose(
        mixed.get_json()["data"][1]["embedding"], alone["embedding"], atol=1e-6
    )


def test_cache_entries_expire(settings: Settings, worker: None) -> None:
    client = app_with(settings, CACHE_TTL_SECONDS=1).test_client()
    texts = fresh()
    assert embed(client, texts).headers["X-Cache"] == "miss"
    assert embed(client, texts).headers["X-Cache"] == "hit"
    time.sleep(1.5)
    assert embed(client, texts).headers["X-Cache"] == "miss"


def test_clear_reaches_every_api_process(app: Flask, settings: Settings, worker: None) -> None:
    one, two = app.test_client(), app_with(settings).test_client()
    texts = fresh()
    embed(one, texts)
    assert embed(two, texts).headers["X-Cache"] == "hit"  # now in two's LRU too
    cleared = one.delete("/api/v1/cache")
    assert cleared.status_code == 200
    assert cleared.get_json()["cleared"] == "all"
    assert embed(two, texts).headers["X-Cache"] == "miss"
    assert embed(two, texts).headers["X-Cache"] == "hit"
    assert one.delete(f"/api/v1/cache?model={MODEL}").status_code == 200
    assert embed(two, texts).headers["X-Cache"] == "miss"  # one model's clear, too


def test_clear_one_model(client: FlaskClient) -> None:
    texts = fresh()
    embed(client, texts)
    response = client.delete(f"/api/v1/cache?model={MODEL}")
    assert response.get_json()["cleared"] == MODEL
    assert embed(client, texts).headers["X-Cache"] == "miss"
    assert client.delete("/api/v1/cache?model=unknown").status_code == 404


def test_opting_out(client: FlaskClient) -> None:
    texts = fresh()
    assert embed(client, texts, **{"Cache-Control": "no-store"}).headers["X-Cache"] == "miss"
    assert embed(client, texts).headers["X-Cache"] == "miss"  # no-store wrote nothing
    assert embed(client, texts, **{"Cache-Control": "no-cache"}).headers["X-Cache"] == "miss"
    assert embed(client, texts).headers["X-Cache"] == "hit"


def test_options_are_part_of_the_key(client: FlaskClient) -> None:
    texts = fresh()
    embed(client, texts)
    raw = client.post(URL, json={"input": texts, "normalize": False})
    assert raw.headers["X-Cache"] == "miss"
    assert abs(np.linalg.norm(raw.get_json()["data"][0]["embedding"]) - 1) > 1e-3


def test_health_shows_cache_figures(client: FlaskClient) -> None:
    texts = fresh()
    embed(client, texts)
    embed(client, texts)
    cache = client.get("/health").get_json()["cache"]
    assert cache["entries"] >= 1
    assert cache["hits"] >= 1 and cache["misses"] >= 1
    assert cache["hit_ratio"] == round(cache["hits"] / (cache["hits"] + cache["misses"]), 4)


def test_a_redis_that_lost_its_data_never_repeats_an_epoch(redis_url: str) -> None:
    """Redis restarted without persistence counts its clears from scratch: a process must
    not mistake the new epoch for the one it read its generations at."""
    client = redis.Redis.from_url(redis_url, db=14)  # a database of this test's own
    client.flushdb()
    cache = EmbeddingCache(client, ttl_seconds=60, local_size=10)
    cache.clear(MODEL)
    cache.clear(MODEL)
    before = cache.epoch_from(client.get(redis_keys.CACHE_EPOCH))
    assert cache.generations(MODEL, before) == (0, 2, 0)
    client.flushdb()  # the data is gone; the same number of clears, of another kind
    cache.clear()
    cache.clear()
    after = cache.epoch_from(client.get(redis_keys.CACHE_EPOCH))
    assert after != before
    assert cache.generations(MODEL, after) == (2, 0, 0)
    client.flushdb()
