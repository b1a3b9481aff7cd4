"""DELETE /api/v1/cache[?model=...|?key=...]: invalidate the cache in every API process at once.

A client key clears its own entries (CACHE_SCOPE=key); an admin key clears everything,
one model's entries, or one key's (`?key=`). Every clear is an audit line.
"""

from __future__ import annotations

from flask import Blueprint, request

from api import auth
from api.services import services
from common.audit import audit
from common.errors import Forbidden, InvalidRequest

bp = Blueprint("cache", __name__)


def _target() -> tuple[str | None, str | None]:
    """(model, scope) to clear: (None, None) is everything."""
    svc = services()
    model, key = request.args.get("model"), request.args.get("key")
    shared = svc.settings.CACHE_SCOPE == "shared"
    if not auth.is_admin():
        if model is not None or key is not None:
            raise Forbidden("?model= and ?key= need an admin key; a client key clears its own")
        if shared:
            raise Forbidden("the cache is shared by every key (CACHE_SCOPE=shared): "
                            "only an admin key may clear it")  # fmt: skip
        return None, auth.owner()
    if key is not None:
        if model is not None or shared or not key:
            raise InvalidRequest(
                "key: give a key id alone, and only with CACHE_SCOPE=key", param="key"
            )
        return None, key
    if model is not None:
        model = svc.registry.get(model).name  # 404 for unknown models
    return model, None


@bp.delete("/api/v1/cache")
def clear_cache() -> dict[str, object]:
    model, scope = _target()
    generation = services().cache.clear(model, scope)
    cleared = f"key:{scope}" if scope else (model or "all")
    audit("cache_cleared", actor=auth.owner(), cleared=cleared, via="http")
    return {
        "cleared": cleared,
        "generation": generation,
        "note": "old entries are unreachable now; Redis reclaims them as their TTLs expire",
    }
