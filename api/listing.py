"""Paged lists of jobs (GET /api/v1/jobs, /api/v1/index-jobs): `?limit`, `?cursor` (the
last page's `next_cursor`: its last item's time and id) and, for admin keys, `?key`."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence

from flask import request

from api import auth
from api.auth import owner
from common import redis_keys
from common.errors import InvalidRequest
from common.listing import Listed

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:  # not '²'
        raise InvalidRequest(f"{name}: an integer from {low} to {high}", param=name)
    return int(raw)


def limit() -> int:
    return int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)


def after() -> tuple[float, str] | None:
    """Where the page starts: after the (created_at, id) the cursor names."""
    raw = request.args.get("cursor")
    if not raw:
        return None
    try:
        score, job_id = base64.urlsafe_b64decode(raw.encode()).decode().split("|", 1)
        if not math.isfinite(float(score)):  # Redis refuses nan as a score
            raise ValueError(score)
        return float(score), job_id
    except ValueError:
        raise InvalidRequest("cursor: not a cursor this API gave out", param="cursor") from None


def next_cursor(items: Sequence[Listed], limit: int) -> str | None:
    """The cursor of the page after a full one; None after the last."""
    if len(items) < limit:
        return None
    last = items[-1]
    return base64.urlsafe_b64encode(f"{last.created_at!r}|{last.id}".encode()).decode()


def listed_owner(what: str) -> str:
    """The caller's own, or (an admin's ?key=) one key's or, with `all`, everyone's."""
    wanted = request.args.get("key")
    if wanted is None or wanted == owner():
        return owner()
    auth.require_admin(f"listing another key's {what}")
    return redis_keys.ALL_OWNERS if wanted == "all" else wanted
