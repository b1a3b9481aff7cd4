"""Remote providers (Ollama, OpenAI) as the API and the workers both see them.

Whether a provider is configured comes from the settings. Everything else comes from Redis,
written by the remote workers: the outcome of their last calls, each provider's circuit
breaker (common/breaker.py) and, for Ollama, the models pulled into it (its
free /api/tags, probed every ~30 s). /health and GET /api/v1/models read it from there, so
no probe ever calls a paid API.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import redis

from common import redis_keys
from common.breaker import CircuitBreaker
from common.errors import ProviderError, ProviderUnavailable, ServiceError, UpstreamTimeout
from common.registry import ModelSpec, Provider
from common.settings import Settings

REMOTE = (Provider.OLLAMA, Provider.OPENAI)
STATE_TTL_SECONDS = 7 * 24 * 3600


def missing_setting(settings: Settings, provider: Provider) -> str | None:
    """The setting a provider needs and lacks; None when it is configured (or local)."""
    if provider is Provider.OLLAMA and not settings.OLLAMA_URL:
        return "OLLAMA_URL"
    if provider is Provider.OPENAI and not (settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL):
        return "OPENAI_API_KEY (or OPENAI_BASE_URL for an OpenAI-compatible server)"
    return None


def require_configured(settings: Settings, spec: ModelSpec) -> None:
    """ProviderUnavailable (503) naming the missing setting, for a model nobody can serve."""
    if missing := missing_setting(settings, spec.provider):
        raise ProviderUnavailable(
            spec.provider.value, f"not configured, so {spec.name!r} cannot be served: set {missing}"
        )


def ollama_tag(name: str) -> str:
    """Ollama's full name for a model: `nomic-embed-text` is `nomic-embed-text:latest`."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def pull_hint(target: str) -> str:
    return f"it is not pulled into Ollama: run `ollama pull {target}` on the Ollama server"


# --- call outcomes and the breaker ---------------------------------------------------------


def is_outage(error: Exception) -> bool:
    """Errors that say a provider is down or overloaded (and count against its breaker)."""
    return isinstance(error, ProviderError) and (
        error.retryable or isinstance(error, UpstreamTimeout)
    )


def record_ok(client: redis.Redis, provider: str) -> None:
    key = redis_keys.provider_state(provider)
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(key, "ok_at", repr(time.time()))
        pipe.expire(key, STATE_TTL_SECONDS)
        pipe.execute()


def record_error(client: redis.Redis, provider: str, error: Exception) -> None:
    """Keep the last error (its message never holds a key: providers redact them)."""
    message = error.message if isinstance(error, ServiceError) else type(error).__name__
    key = redis_keys.provider_state(provider)
    fields = {"error_at": repr(time.time()), "error": message, "outage": int(is_outage(error))}
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, STATE_TTL_SECONDS)
        pipe.execute()


def record_models(client: redis.Redis, provider: str, models: list[str]) -> None:
    """What /api/tags listed: Ollama is up and has these models pulled."""
    key = redis_keys.provider_state(provider)
    now = repr(time.time())
    fields = {"models": json.dumps(sorted(models)), "probed_at": now, "ok_at": now}
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, STATE_TTL_SECONDS)
        pipe.execute()


def _iso(raw: bytes | None) -> str | None:
    return datetime.fromtimestamp(float(raw), UTC).isoformat() if raw else None


def health(client: redis.Redis, settings: Settings, provider: Provider) -> dict[str, object]:
    """One provider for /health: status up, down or not_configured, and why."""
    if missing := missing_setting(settings, provider):
        return {"status": "not_configured", "missing": missing.split(" ")[0]}
    raw = {k.decode(): v for k, v in client.hgetall(redis_keys.provider_state(provider)).items()}
    breaker = CircuitBreaker(client, provider.value, settings.PROVIDER_BREAKER_FAILURES).state()
    ok_at = float(raw.get("ok_at") or 0)
    error_at = float(raw.get("error_at") or 0)
    outage = raw.get("outage") == b"1" and error_at > ok_at
    body: dict[str, object] = {
        "status": "down" if breaker.state == "open" or outage else "up",
        "breaker": breaker.as_dict(),
        "last_ok_at": _iso(raw.get("ok_at")),
        "last_error_at": _iso(raw.get("error_at")),
        "last_error": raw["error"].decode() if raw.get("error") else None,
    }
    if provider is Provider.OLLAMA:
        body["probed_at"] = _iso(raw.get("probed_at"))
        body["models"] = json.loads(raw["models"]) if raw.get("models") else None
    return body


def unavailable_reason(spec: ModelSpec, state: dict[str, object]) -> str | None:
    """Why a remote model cannot be served now (None: it can), from its provider's health."""
    if state["status"] == "not_configured":
        return f"{spec.provider.value} is not configured: set {state['missing']}"
    if state["status"] == "down":
        why = state.get("last_error") or "its circuit breaker is open"
        return f"{spec.provider.value} is down: {why}"
    pulled = state.get("models")
    if isinstance(pulled, list) and ollama_tag(spec.target) not in map(ollama_tag, pulled):
        return pull_hint(spec.target)
    return None
