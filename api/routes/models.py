"""GET /api/v1/models: the registry (the models the caller's key may use), with which
models a live worker can serve now."""

from __future__ import annotations

from flask import Blueprint

from api import auth
from api.services import Services, services
from common import dimensions, providers
from common.registry import ModelSpec, Provider

bp = Blueprint("models", __name__)

ProviderStates = dict[Provider, dict[str, object]]


def provider_states(svc: Services) -> ProviderStates:
    """Each remote provider's health, from what the workers keep in Redis (no provider call)."""
    return {p: providers.health(svc.redis, svc.settings, p) for p in providers.REMOTE}


def model_entry(
    svc: Services, spec: ModelSpec, states: ProviderStates | None = None
) -> dict[str, object]:
    """`available`: a live worker serves it and, for a remote model, its provider is
    configured and up and (Ollama) has it pulled; `unavailable_reason` says what is missing."""
    reason = None
    if spec.provider in providers.REMOTE:
        state = (states or provider_states(svc))[spec.provider]
        reason = providers.unavailable_reason(spec, state)
        spec = dimensions.filled_in(svc.redis, spec)
    if reason is None and not any(spec.name in w.models for w in svc.workers()):
        reason = f"no worker on the {spec.queue!r} queue serves it"
    return {
        "id": spec.name,
        "provider": spec.provider.value,
        "dimensions": spec.dimensions,
        "max_tokens": spec.max_tokens,
        "queue": spec.queue,
        "revision": spec.revision,
        "default": spec.name == svc.registry.default,
        "available": reason is None,
        "unavailable_reason": reason,
    }


def listed(spec: ModelSpec) -> bool:
    """Enabled, and one the caller's key may use: what every front's model list shows."""
    return spec.enabled and auth.may_use(spec.name)


@bp.get("/api/v1/models")
def list_models() -> dict[str, object]:
    svc = services()
    states = provider_states(svc)
    data = [model_entry(svc, s, states) for s in svc.registry if listed(s)]
    return {"object": "list", "data": data}
