"""DELETE /api/v1/cache[?model=...]: invalidate the cache in every API process at once."""

from __future__ import annotations

from flask import Blueprint, request

from api.services import services

bp = Blueprint("cache", __name__)


@bp.delete("/api/v1/cache")
def clear_cache() -> dict[str, object]:
    svc = services()
    model = request.args.get("model")
    if model is not None:
        model = svc.registry.get(model).name  # 404 for unknown models
    generation = svc.cache.clear(model)
    return {
        "cleared": model or "all",
        "generation": generation,
        "note": "old entries are unreachable now; Redis reclaims them as their TTLs expire",
    }
