"""GET /api/v1/models: the registry, with which models a live worker can serve now."""

from __future__ import annotations

from flask import Blueprint

from api.services import Services, services
from common.registry import ModelSpec

bp = Blueprint("models", __name__)


def model_entry(svc: Services, spec: ModelSpec) -> dict[str, object]:
    available = any(spec.name in w.models for w in svc.workers())
    return {
        "id": spec.name,
        "provider": spec.provider.value,
        "dimensions": spec.dimensions,
        "max_tokens": spec.max_tokens,
        "queue": spec.queue,
        "revision": spec.revision,
        "default": spec.name == svc.registry.default,
        "available": available,
    }


@bp.get("/api/v1/models")
def list_models() -> dict[str, object]:
    svc = services()
    return {"object": "list", "data": [model_entry(svc, s) for s in svc.registry if s.enabled]}
