"""The request as the pipeline sees it: one value, read once from Flask's request and
`g` (where api/auth.py put the caller), then passed along instead of read again."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from flask import g, request

from api import auth
from common import errors
from common.api_keys import ApiKey

DEADLINE_HEADER = "X-Request-Timeout"


@dataclass(frozen=True)
class CachePolicy:
    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, cache_control: str | None) -> CachePolicy:
        """`no-store`: neither read nor write; `no-cache`: compute afresh, then store."""
        directives = {d.strip().lower() for d in (cache_control or "").split(",")}
        if "no-store" in directives:
            return cls(read=False, write=False)
        return cls(read="no-cache" not in directives, write=True)


@dataclass(frozen=True)
class Call:
    owner: str
    """Who owns what the call makes: the key's id (auth.OPEN_OWNER while open)."""
    key: ApiKey | None
    """The caller's key, with its limits (None while the service runs open)."""
    scope: str
    """Whose cache entries it reads and writes (CACHE_SCOPE)."""
    cache_epoch: object
    """The cache's clear counter as this request read it (common/cache.py)."""
    policy: CachePolicy
    deadline: float | None
    """Epoch seconds the client waits until (X-Request-Timeout); None: no deadline."""

    def with_policy(self, policy: CachePolicy) -> Call:
        return replace(self, policy=policy)

    def check_model(self, model: str) -> None:
        """403 for a model outside the caller's key's list."""
        auth.check_model(model, self.key)


def client_deadline(raw: str | None) -> float | None:
    """X-Request-Timeout: seconds the client will wait; work still queued then is dropped."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise errors.InvalidRequest(
            f"{DEADLINE_HEADER}: seconds, more than 0 and at most 3600", DEADLINE_HEADER
        )
    return time.time() + seconds


def current() -> Call:
    """This request's call."""
    return Call(
        owner=auth.owner(),
        key=auth.caller_key(),
        scope=auth.cache_scope(),
        cache_epoch=g.get("cache_epoch"),
        policy=CachePolicy.from_header(request.headers.get("Cache-Control")),
        deadline=client_deadline(request.headers.get(DEADLINE_HEADER)),
    )
