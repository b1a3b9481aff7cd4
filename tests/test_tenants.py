"""Tenants: auth that never turns off, admin and client keys, per-key models, rates and
quotas, expiry, usage, per-key cache scope, the refused-key limit and the audit trail.

Runs on a Redis of its own, with its own worker and API, in the deployed mode
(AUTH_REQUIRED=true): keys made here never reach the session's open services.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import ollama
import openai
import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from cli.redis_server import RedisServer
from common import redis_keys
from common.api_keys import KeyLimits, KeyStore
from common.settings import Settings, load_settings
from tests.conftest import (
    GENEROUS_LIMITS,
    MODEL,
    OPEN_MODE,
    ROOT,
    held_settings,
    running_worker,
    service_env,
    start_api,
    stop,
)

OTHER = "nomic-embed-text"
"""A model of the default registry that no test here runs: a key limited to it may not use
MODEL."""


@pytest.fixture(scope="module")
def tenant_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("tenants-redis"), persist=False).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def tenant_worker(tenant_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("tenants-worker") / "worker.log"
    with running_worker(tenant_redis, log, name="tenants"):
        yield


@pytest.fixture(scope="module")
def tenant_settings(tenant_redis: str) -> Settings:
    return load_settings(REDIS_URL=tenant_redis, GPU_ENABLED=False, **GENEROUS_LIMITS)


@pytest.fixture(scope="module")
def tenant_app(tenant_settings: Settings, tenant_worker: None) -> Flask:
    assert tenant_settings.AUTH_REQUIRED  # the default
    return create_app(tenant_settings)


@pytest.fixture(scope="module")
def store(tenant_redis: str) -> KeyStore:
    return KeyStore(redis.Redis.from_url(tenant_redis))


@pytest.fixture(scope="module")
def admin(store: KeyStore) -> dict[str, str]:
    _, text = store.create("ops", "admin")
    return bearer(text)


@pytest.fixture
def http(tenant_app: Flask) -> FlaskClient:
    return tenant_app.test_client()


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def key_id(headers: dict[str, str]) -> str:
    return headers["Authorization"].split("_")[1]


def new_key(http: FlaskClient, admin: dict[str, str], **body: object) -> dict[str, str]:
    """A client key made over HTTP by the admin: its headers."""
    made = http.post("/api/v1/keys", json={"name": "t", **body}, headers=admin)
    assert made.status_code == 201, made.get_json()
    return bearer(made.get_json()["key"])


def fresh() -> str:
    return f"tenant text {uuid.uuid4().hex}"


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT,
                          env=service_env(redis_url, LOG_LEVEL="info"), capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def error_type(response: object) -> str:
    return response.get_json()["error"]["type"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- auth stays on


def test_revoking_the_last_key_leaves_auth_on(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persist=False).start()
    try:
        base = load_settings(REDIS_URL=server.url, **GENEROUS_LIMITS, **OPEN_MODE)
        http = create_app(held_settings(base, tmp_path)).test_client()
        assert http.post("/api/v1/jobs", json={"input": "open"}).status_code == 202
        created = cli(server.url, "keys", "create", "--name", "only")
        assert created.returncode == 0, created.stderr
        text = created.stdout.strip()
        time.sleep(1.1)  # a process re-reads "was a key ever made" once a second
        assert http.post("/api/v1/jobs", json={"input": "x"}).status_code == 401
        assert cli(server.url, "keys", "revoke", text.split("_")[1]).returncode == 0
        assert redis.Redis.from_url(server.url).hlen(redis_keys.API_KEYS) == 0  # none left
        time.sleep(1.1)
        assert http.post("/api/v1/jobs", json={"input": "x"}).status_code == 401
        assert http.post("/api/v1/jobs", json={"input": "x"},
                         headers=bearer(text)).status_code == 401  # fmt: skip
        fresh_process = create_app(held_settings(base, tmp_path)).test_client()
        assert fresh_process.post("/api/v1/jobs", json={"input": "x"}).status_code == 401
    finally:
        server.stop()


def test_auth_is_required_by_default_even_before_any_key(tenant_redis: str) -> None:
    http = create_app(load_settings(REDIS_URL=tenant_redis)).test_client()
    answer = http.get("/api/v1/models")
    assert answer.status_code == 401 and error_type(answer) == "authentication_error"


# ---------------------------------------------------------------------------- roles


def test_client_keys_get_403_on_admin_routes_and_admins_see_all(
    http: FlaskClient, admin: dict[str, str]
) -> None:
    alice, bob = new_key(http, admin), new_key(http, admin)
    refused = [
        http.post("/api/v1/keys", json={"name": "x"}, headers=alice),
        http.get("/api/v1/keys", headers=alice),
        http.patch(f"/api/v1/keys/{key_id(bob)}", json={"label": "x"}, headers=alice),
        http.delete(f"/api/v1/keys/{key_id(bob)}", headers=alice),
        http.delete(f"/api/v1/cache?model={MODEL}", headers=alice),
        http.delete(f"/api/v1/cache?key={key_id(bob)}", headers=alice),
        http.get("/api/v1/index-jobs?key=all", headers=alice),
        http.get("/api/v1/jobs?key=all", headers=alice),
        http.get(f"/api/v1/jobs?key={key_id(bob)}", headers=alice),
        http.get(f"/api/v1/usage?key={key_id(bob)}", headers=alice),
        http.get("/api/v1/usage?key=all", headers=alice),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert {error_type(r) for r in refused} == {"permission_error"}
    assert http.delete("/api/v1/cache", headers=alice).status_code == 200  # its own scope

    job = http.post("/api/v1/jobs", json={"input": fresh()}, headers=alice).get_json()
    docs = {"documents": [{"id": "d", "text": fresh()}]}
    index = http.post("/api/v1/index-jobs", json=docs, headers=alice).get_json()
    assert http.get(job["status_url"], headers=bob).status_code == 404
    assert http.get(job["status_url"], headers=admin).status_code == 200
    assert http.get(index["status_url"], headers=admin).status_code == 200

    def jobs_listed(headers: dict[str, str], query: str = "") -> list[str]:
        page = http.get(f"/api/v1/jobs{query}", headers=headers).get_json()
        return [j["id"] for j in page["data"]]

    assert jobs_listed(alice) == [job["id"]]
    assert job["id"] not in jobs_listed(bob)
    assert job["id"] in jobs_listed(admin, "?key=all")
    assert jobs_listed(admin, f"?key={key_id(alice)}") == [job["id"]]
    everyone = http.get("/api/v1/index-jobs?key=all", headers=admin).get_json()["data"]
    assert index["id"] in [j["id"] for j in everyone]
    alices = http.get(f"/api/v1/index-jobs?key={key_id(alice)}", headers=admin).get_json()
    assert [j["id"] for j in alices["data"]] == [index["id"]]
    listed = http.get("/api/v1/keys", headers=admin).get_json()["data"]
    assert {key_id(alice), key_id(bob)} <= {k["id"] for k in listed}
    assert all("hash" not in k and "key" not in k for k in listed)
    assert {k["role"] for k in listed} == {"admin", "client"}


def test_keys_from_before_roles_are_clients(store: KeyStore, http: FlaskClient) -> None:
    old = {"id": "0ld0ld0ld0ld", "name": "old", "created_at": time.time(),
           "hash": hashlib.sha256(b"secret").hexdigest()}  # fmt: skip
    store.redis.hset(redis_keys.API_KEYS, old["id"], orjson.dumps(old))
    as_old = bearer("emb_0ld0ld0ld0ld_secret")
    assert http.get("/api/v1/models", headers=as_old).status_code == 200
    assert http.get("/api/v1/keys", headers=as_old).status_code == 403


# ---------------------------------------------------------------------------- models


def test_a_model_outside_the_keys_list_is_403_everywhere_and_unlisted(
    http: FlaskClient, admin: dict[str, str]
) -> None:
    limited = new_key(http, admin, models=[OTHER])
    text = {"input": fresh(), "model": MODEL}
    upload = {"file": (io.BytesIO(orjson.dumps({"id": "d", "text": "t"})), "d.jsonl")}
    answers = {
        "native": http.post("/api/v1/embeddings", json=text, headers=limited),
        "default model": http.post("/api/v1/embeddings", json={"input": "x"}, headers=limited),
        "job": http.post("/api/v1/jobs", json=text, headers=limited),
        "index job": http.post(
            "/api/v1/index-jobs",
            json={"model": MODEL, "documents": [{"id": "d", "text": "t"}]},
            headers=limited,
        ),
        "index upload": http.post(
            f"/api/v1/index-jobs?model={MODEL}", data=upload, headers=limited
        ),
        "openai": http.post("/v1/embeddings", json=text, headers=limited),
        "openai model": http.get(f"/v1/models/{MODEL}", headers=limited),
        "ollama embed": http.post("/api/embed", json=text, headers=limited),
        "ollama legacy": http.post(
            "/api/embeddings", json={"model": MODEL, "prompt": "x"}, headers=limited
        ),
        "ollama show": http.post("/api/show", json={"model": MODEL}, headers=limited),
    }
    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(answers, 403)
    assert "may not use model" in answers["native"].get_json()["error"]["message"]
    assert answers["openai"].get_json()["error"]["type"] == "permission_error"
    assert "may not use model" in answers["ollama embed"].get_json()["error"]

    listings = {
        "native": [m["id"] for m in http.get("/api/v1/models", headers=limited).get_json()["data"]],
        "openai": [m["id"] for m in http.get("/v1/models", headers=limited).get_json()["data"]],
        "ollama": [m["name"] for m in http.get("/api/tags", headers=limited).get_json()["models"]],
    }
    assert listings == {"native": [OTHER], "openai": [OTHER], "ollama": [OTHER]}
    everything = [m["id"] for m in http.get("/v1/models", headers=admin).get_json()["data"]]
    assert MODEL in everything and OTHER in everything


@pytest.fixture(scope="module")
def live(tenant_redis: str, tenant_worker: None, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The API under gunicorn, as deployed (auth required), on the tenants' Redis."""
    log = tmp_path_factory.mktemp("tenants-api") / "api.log"
    process, url = start_api(tenant_redis, log, AUTH_REQUIRED="true")
    yield url
    stop(process)


def test_both_sdks_get_403_for_a_model_outside_the_keys_list(live: str, store: KeyStore) -> None:
    _, text = store.create("sdk", limits=KeyLimits(models=[OTHER]))
    sdk = openai.OpenAI(base_url=f"{live}/v1", api_key=text, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.embeddings.create(model=MODEL, input="x")
    assert [m.id for m in sdk.models.list()] == [OTHER]
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": "x"}}  # fmt: skip
    uploaded = sdk.files.create(file=("b.jsonl", io.BytesIO(orjson.dumps(line))), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError):
        sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings",
                           completion_window="24h")  # fmt: skip
    client = ollama.Client(host=live, headers=bearer(text))
    for call in (lambda: client.embed(model=MODEL, input="x"),
                 lambda: client.embeddings(model=MODEL, prompt="x")):  # fmt: skip
        with pytest.raises(ollama.ResponseError) as raised:
            call()
        assert raised.value.status_code == 403
    assert [m.model for m in client.list().models] == [OTHER]


# ---------------------------------------------------------------------------- limits


EARLIER = {
    "tokens_per_minute": ("min", lambda minute: str(int(minute) - 10)),
    "tokens_per_day": ("d", lambda day: str(date.fromisoformat(day) - timedelta(days=1))),
    "tokens_per_month": ("m", lambda month: "2000-01"),
}
"""Per limit: its buckets' part of the key name (common/redis_keys.usage_*), and an earlier
period's name."""


def move_to_the_past(client: redis.Redis, owner: str, limit: str) -> None:
    """What the clock does at the period's end: the current bucket becomes an earlier one."""
    part, earlier = EARLIER[limit]
    for name in client.scan_iter(f"{redis_keys.PREFIX}:usage:{owner}:{part}:*"):
        stem, stamp = name.decode().rsplit(":", 1)
        client.rename(name, f"{stem}:{earlier(stamp)}")


@pytest.mark.parametrize("limit", ["tokens_per_minute", "tokens_per_day", "tokens_per_month"])
def test_a_token_quota_refuses_then_resets_with_the_next_period(
    http: FlaskClient, admin: dict[str, str], store: KeyStore, limit: str
) -> None:
    if limit == "tokens_per_minute" and time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)  # all three calls in one minute
    text = fresh()
    probe = http.post("/v1/embeddings", json={"model": MODEL, "input": text}, headers=admin)
    tokens = probe.get_json()["usage"]["prompt_tokens"]
    limited = new_key(http, admin, **{limit: 3 * tokens - 1})
    calls = [http.post("/v1/embeddings", json={"model": MODEL, "input": text}, headers=limited)
             for _ in range(3)]  # fmt: skip
    assert [c.status_code for c in calls] == [200, 200, 429]
    refused = calls[-1]
    assert int(refused.headers["Retry-After"]) >= 1
    assert limit.replace("_", " ") in refused.get_json()["error"]["message"]
    native = http.post("/api/v1/embeddings", json={"input": text}, headers=limited)
    assert native.status_code == 429 and native.headers["Retry-After"]
    move_to_the_past(store.redis, key_id(limited), limit)
    again = http.post("/v1/embeddings", json={"model": MODEL, "input": text}, headers=limited)
    assert again.status_code == 200, again.get_json()


def test_a_single_request_over_a_quota_is_a_400_not_a_retry(
    http: FlaskClient, admin: dict[str, str]
) -> None:
    tiny = new_key(http, admin, tokens_per_day=2)
    answer = http.post("/api/v1/embeddings", json={"input": fresh()}, headers=tiny)
    assert answer.status_code == 400 and "tokens per day" in answer.get_json()["error"]["message"]


def test_a_keys_own_request_rate_replaces_the_global_one(
    http: FlaskClient, admin: dict[str, str]
) -> None:
    slow = new_key(http, admin, requests_per_minute=2)
    codes = [http.get("/api/v1/models", headers=slow).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert http.get("/api/v1/models", headers=admin).status_code == 200  # others unaffected


def test_an_expired_key_gets_401(http: FlaskClient, admin: dict[str, str]) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    brief = new_key(http, admin, expires_at=soon, label="demo, ends soon")
    assert http.get("/api/v1/models", headers=brief).status_code == 200
    time.sleep(2)
    answer = http.get("/api/v1/models", headers=brief)
    assert answer.status_code == 401 and "expired" in answer.get_json()["error"]["message"]
    revived = http.patch(f"/api/v1/keys/{key_id(brief)}", json={"expires_at": None}, headers=admin)
    assert revived.status_code == 200 and revived.get_json()["label"] == "demo, ends soon"
    assert http.get("/api/v1/models", headers=brief).status_code == 200


# ---------------------------------------------------------------------------- usage


def test_usage_is_the_sum_of_the_calls_usage(
    live: str, http: FlaskClient, admin: dict[str, str], tenant_redis: str
) -> None:
    counted = new_key(http, admin)
    repeated = fresh()
    sdk = openai.OpenAI(base_url=f"{live}/v1", api_key=counted["Authorization"][7:],
                        max_retries=0)  # fmt: skip
    answers = [sdk.embeddings.create(model=MODEL, input=[fresh(), fresh()]).usage.prompt_tokens,
               sdk.embeddings.create(model=MODEL, input=repeated).usage.prompt_tokens,
               sdk.embeddings.create(model=MODEL, input=repeated).usage.prompt_tokens]  # fmt: skip
    native = http.post("/api/v1/embeddings", json={"input": fresh()}, headers=counted)
    answers.append(native.get_json()["usage"]["prompt_tokens"])
    ollama_client = ollama.Client(host=live, headers=counted)
    answers.append(ollama_client.embed(model=MODEL, input=fresh()).prompt_eval_count)

    report = http.get("/api/v1/usage", headers=counted).get_json()
    today = datetime.now(UTC).date().isoformat()
    assert report["total"] == {"requests": 5, "input_tokens": sum(answers), "cache_hits": 1}
    assert [(r["date"], r["model"], r["key"]) for r in report["data"]] == [
        (today, MODEL, key_id(counted))]  # fmt: skip
    assert report["by_model"][MODEL] == report["total"]
    by_admin = http.get(f"/api/v1/usage?key={key_id(counted)}&from={today}&to={today}",
                        headers=admin).get_json()  # fmt: skip
    assert by_admin["total"] == report["total"]
    everyone = http.get("/api/v1/usage?key=all", headers=admin).get_json()
    assert key_id(counted) in {r["key"] for r in everyone["data"]}
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    empty = http.get(f"/api/v1/usage?from={yesterday}&to={yesterday}", headers=counted)
    assert empty.get_json()["total"]["requests"] == 0
    for bad in ("from=2025-13-01", "to=yesterday", f"from={today}&to={yesterday}"):
        assert http.get(f"/api/v1/usage?{bad}", headers=counted).status_code == 400

    table = subprocess.run(
        [sys.executable, "-m", "cli", "usage", "--url", live,
         "--api-key", counted["Authorization"][7:]],
        cwd=ROOT, env=service_env(tenant_redis), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    total = table.stdout.strip().splitlines()[-1].split()
    assert total == ["total", "5", str(sum(answers)), "1"]


# ---------------------------------------------------------------------------- cache scope


def test_each_key_has_its_own_cache_entries(
    http: FlaskClient, admin: dict[str, str], tenant_settings: Settings
) -> None:
    a, b = new_key(http, admin), new_key(http, admin)
    texts = [fresh()]

    def cache(client: FlaskClient, who: dict[str, str]) -> str:
        answer = client.post("/api/v1/embeddings", json={"input": texts}, headers=who)
        assert answer.status_code == 200, answer.get_json()
        return answer.headers["X-Cache"]

    assert [cache(http, a), cache(http, a)] == ["miss", "hit"]
    assert [cache(http, b), cache(http, b)] == ["miss", "hit"]  # A's call told B nothing
    other_process = create_app(tenant_settings).test_client()
    assert http.delete("/api/v1/cache", headers=a).get_json()["cleared"] == f"key:{key_id(a)}"
    assert cache(http, a) == "miss"
    assert [cache(http, b), cache(other_process, b)] == ["hit", "hit"]  # B's entries stay
    cleared = http.delete(f"/api/v1/cache?key={key_id(b)}", headers=admin)
    assert cleared.status_code == 200
    assert [cache(other_process, b), cache(http, a)] == ["miss", "hit"]

    shared = create_app(load_settings(**{**tenant_settings.model_dump(),
                                         "CACHE_SCOPE": "shared"})).test_client()  # fmt: skip
    texts = [fresh()]
    assert [cache(shared, a), cache(shared, b)] == ["miss", "hit"]
    refused = shared.delete("/api/v1/cache", headers=b)
    assert refused.status_code == 403 and "CACHE_SCOPE=shared" in refused.get_json()["error"][
        "message"]  # fmt: skip
    assert shared.delete("/api/v1/cache", headers=admin).get_json()["cleared"] == "all"
    assert cache(shared, b) == "miss"


# ---------------------------------------------------------------------------- refused keys


def test_refused_keys_from_one_address_are_rate_limited(
    tenant_settings: Settings, admin: dict[str, str]
) -> None:
    app = create_app(load_settings(**{**tenant_settings.model_dump(),
                                      "AUTH_FAILURES_PER_MINUTE": 3}))  # fmt: skip
    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "10.9.9.9"
    wrong = [guesser.get("/api/v1/models", headers=bearer(f"emb_{key_id(admin)}_guess{i}"))
             for i in range(3)]  # fmt: skip
    assert [w.status_code for w in wrong] == [401, 401, 401]
    blocked = guesser.get("/api/v1/models", headers=admin)  # even a valid key, from there
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert "refused API keys" in blocked.get_json()["error"]["message"]
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "10.9.9.10"
    assert elsewhere.get("/api/v1/models", headers=admin).status_code == 200


# ---------------------------------------------------------------------------- audit


def test_key_changes_and_cache_clears_are_audited(
    http: FlaskClient, admin: dict[str, str], tenant_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="embeddings.audit")
    made = http.post("/api/v1/keys", json={"name": "audited"}, headers=admin).get_json()
    http.patch(f"/api/v1/keys/{made['id']}", json={"tokens_per_day": 10}, headers=admin)
    http.delete(f"/api/v1/keys/{made['id']}", headers=admin)
    http.delete("/api/v1/cache", headers=admin)
    lines = [r for r in caplog.records if r.name == "embeddings.audit"]
    assert [(r.msg, r.actor, r.via) for r in lines] == [  # type: ignore[attr-defined]
        ("key_created", key_id(admin), "http"), ("key_updated", key_id(admin), "http"),
        ("key_revoked", key_id(admin), "http"), ("cache_cleared", key_id(admin), "http"),
    ]  # fmt: skip
    assert [getattr(r, "key_id", None) for r in lines[:3]] == [made["id"]] * 3
    assert made["key"] not in caplog.text

    created = cli(tenant_redis, "keys", "create", "--name", "by-cli", "--role", "client",
                  "--tokens-per-day", "100", "--model", MODEL)  # fmt: skip
    new_id = created.stdout.strip().split("_")[1]
    updated = cli(tenant_redis, "keys", "update", new_id, "--clear", "tokens_per_day")
    revoked = cli(tenant_redis, "keys", "revoke", new_id)
    audit = [json.loads(line) for step in (created, updated, revoked)
             for line in step.stderr.splitlines() if line.startswith("{")]  # fmt: skip
    assert [(a["event"], a["logger"], a["actor"], a["key_id"]) for a in audit] == [
        ("key_created", "embeddings.audit", "cli", new_id),
        ("key_updated", "embeddings.audit", "cli", new_id),
        ("key_revoked", "embeddings.audit", "cli", new_id),
    ]
    assert created.stdout.strip() not in created.stderr
    assert "tokens_per_day" not in updated.stdout  # cleared
