"""GET /api/v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD[&key=<id>|all]: requests, input tokens
and cache hits by key, day (UTC) and model. A client key reads its own; an admin key any
key's, or every key's with `key=all`."""

from __future__ import annotations

from datetime import UTC, date, datetime

from flask import Blueprint, Response, request

from api import auth
from api.render import json_response
from api.services import services
from common.errors import InvalidRequest
from common.usage import KEEP_DAYS

bp = Blueprint("usage", __name__)

FIGURES = ("requests", "input_tokens", "cache_hits")
DEFAULT_DAYS = 30


def _day(name: str, default: date) -> date:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: a date, YYYY-MM-DD (UTC)", param=name) from None


def _owners() -> list[str]:
    wanted = request.args.get("key")
    if wanted is None or wanted == auth.owner():
        return [auth.owner()]
    auth.require_admin("reading another key's usage")
    return services().usage.owners() if wanted == "all" else [wanted]


def _sum(rows: list[dict[str, object]]) -> dict[str, int]:
    return {name: sum(int(row[name]) for row in rows) for name in FIGURES}  # type: ignore[call-overload]


@bp.get("/api/v1/usage")
def get_usage() -> Response:
    last = _day("to", datetime.now(UTC).date())
    first = _day("from", date.fromordinal(max(1, last.toordinal() - DEFAULT_DAYS + 1)))
    if first > last or (last - first).days >= KEEP_DAYS:
        raise InvalidRequest(f"from: on or before `to`, at most {KEEP_DAYS} days before it",
                             param="from")  # fmt: skip
    rows = services().usage.read(_owners(), first, last)
    models = sorted({str(row["model"]) for row in rows})
    by_model = {m: _sum([row for row in rows if row["model"] == m]) for m in models}
    return json_response({"object": "usage", "from": first.isoformat(), "to": last.isoformat(),
                          "data": rows, "by_model": by_model, "total": _sum(rows)})  # fmt: skip
