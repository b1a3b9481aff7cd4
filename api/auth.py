"""Who is calling, and may they: API keys and roles, per-caller rate limits, sync concurrency.

Auth is on unless AUTH_REQUIRED=false (open mode, for one machine's own use: the local
launcher sets it), and even then from the moment the first key is made: revoking keys
never turns it off (common/api_keys.py). Keys come as `Authorization: Bearer` (the
OpenAI SDK's way) or `X-API-Key`. An `admin` key manages keys and sees every owner's
work; a `client` key only its own: every job, batch and file belongs to the key that made
it (`owner()`), and other clients get 404 for it, not 403. The anonymous caller of open
mode acts as admin. A client address that presents AUTH_FAILURES_PER_MINUTE refused keys
gets 429 for every call until its minute is over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from flask import Flask, Response, current_app, g, request

from api.services import Services, services
from common import api_keys, redis_keys
from common.api_keys import ApiKey, KeyStore
from common.errors import Forbidden, TooManyRequests, Unauthorized
from common.rate_limit import Decision, FailureWindow, RateLimiter

OPEN_OWNER = "public"
PUBLIC_PATHS = ("/livez", "/readyz", "/health", "/openapi.json", "/docs")
"""Orchestrator probes and the API docs answer without a key."""
KEYS_CHECK_SECONDS = 1.0


class Gate:
    """Per process: whether auth is on (re-read every second while open), the limiters
    and the sync slots."""

    def __init__(self, svc: Services) -> None:
        self.keys = KeyStore(svc.redis)
        self.limiter = RateLimiter(
            svc.settings.RATE_LIMIT_REQUESTS_PER_MINUTE, svc.settings.RATE_LIMIT_BURST
        )
        self.failures = FailureWindow(svc.redis, svc.settings.AUTH_FAILURES_PER_MINUTE)
        self.required = svc.settings.AUTH_REQUIRED
        self._checked = (0.0, False)
        self.slots = threading.BoundedSemaphore(svc.settings.sync_slots_per_process())

    def auth_on(self) -> bool:
        if self.required:
            return True
        checked_at, on = self._checked
        if time.monotonic() - checked_at > KEYS_CHECK_SECONDS:
            on = self.keys.auth_on()
            self._checked = (time.monotonic(), on)
        return on

    def limiter_for(self, key: ApiKey | None) -> RateLimiter:
        """The key's own requests_per_minute (its bucket holds at most RATE_LIMIT_BURST),
        or the global rate."""
        per_minute = key.limits.requests_per_minute if key else None
        if per_minute is None:
            return self.limiter
        return RateLimiter(per_minute, min(self.limiter.burst, per_minute))


def _gate() -> Gate:
    return current_app.extensions["embeddings.gate"]


def _presented() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key")


def _identify(gate: Gate, presented: str) -> ApiKey:
    """The caller's key, in one round trip with its address's refused-key count."""
    address = request.remote_addr or "unknown"
    parsed = api_keys.parse(presented)
    with services().redis.pipeline(transaction=False) as pipe:
        gate.failures.read_in(pipe, address)
        pipe.hget(redis_keys.API_KEYS, parsed[0] if parsed else "")
        count, ttl_ms, raw = pipe.execute()
    wait = gate.failures.blocked(count, ttl_ms)
    if wait is not None:
        raise TooManyRequests(
            f"too many refused API keys from this address: retry in {wait}s",
            {"Retry-After": str(wait)},
        )
    key = api_keys.check(raw, parsed[1] if parsed else "")
    if key is None or key.expired():
        gate.failures.note(address)
    if key is None:
        raise Unauthorized("the API key is not valid (revoked, or never issued)")
    if key.limits.expires_at is not None and key.expired():
        raise Unauthorized(f"the API key expired at {key.limits.expires_at.isoformat()}")
    return key


def _check() -> None:
    if request.path.startswith(PUBLIC_PATHS):
        return
    gate = _gate()
    key = None
    if gate.auth_on():
        presented = _presented()
        if not presented:
            raise Unauthorized(
                "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
            )
        key = _identify(gate, presented)
        g.owner, caller = key.id, key.id
    else:  # open: whatever key a client sends (SDKs insist on one) is ignored
        g.owner, caller = OPEN_OWNER, f"ip:{request.remote_addr}"
    g.key = key
    limiter = gate.limiter_for(key)
    decision = _admit(limiter, redis_keys.rate_bucket(caller))
    g.rate_headers = decision.headers()
    if not decision.allowed:
        whose = "this key's" if limiter is not gate.limiter else "the"
        raise TooManyRequests(
            f"{whose} rate limit of {decision.limit} requests (refilling at "
            f"{round(limiter.rate * 60)}/min) reached",
            g.rate_headers,
        )


def _admit(limiter: RateLimiter, bucket: str) -> Decision:
    """The caller's rate-limit token, and the cache's clear counter for this request
    (`g.cache_epoch`, common/cache.py), in one round trip: a cache hit needs no other."""
    svc = services()
    with svc.redis.pipeline(transaction=False) as pipe:
        limiter.take_in(pipe, bucket)
        svc.cache.read_epoch_in(pipe)
        replies = pipe.execute()
    g.cache_epoch = svc.cache.epoch_from(replies[1])
    return limiter.decision(replies[0])


def _add_headers(response: Response) -> Response:
    for name, value in g.get("rate_headers", {}).items():
        response.headers.setdefault(name, value)
    return response


def owner() -> str:
    """The key id of the caller (OPEN_OWNER while the service runs open)."""
    return g.get("owner", OPEN_OWNER)


def caller_key() -> ApiKey | None:
    """The caller's key (None while the service runs open)."""
    return g.get("key")


def is_admin() -> bool:
    """An admin key, or anyone while the service runs open."""
    key = caller_key()
    return key is None or key.admin


def require_admin(what: str) -> None:
    if not is_admin():
        raise Forbidden(f"{what} needs an admin key; this one is a client key")


def owner_filter() -> str | None:
    """Whose jobs the caller may see: its own, or (None) everyone's for an admin key."""
    return None if is_admin() else owner()


def may_use(model: str, key: ApiKey | Literal["caller"] | None = "caller") -> bool:
    """Whether `key` (default: the caller's; None: open mode) may use the model."""
    key = caller_key() if key == "caller" else key
    return key is None or key.allows(model)


def check_model(model: str, key: ApiKey | Literal["caller"] | None = "caller") -> None:
    """403 for a model outside the key's list."""
    if not may_use(model, key):
        raise Forbidden(f"this API key may not use model {model!r}", param="model")


def cache_scope() -> str:
    """Whose cache entries the caller reads and writes: its own (CACHE_SCOPE=key), or
    everyone's ('')."""
    return owner() if services().settings.CACHE_SCOPE == "key" else ""


@contextmanager
def sync_slot() -> Iterator[None]:
    """This process's share of MAX_CONCURRENT_REQUESTS sync calls; the next one gets 429."""
    gate = _gate()
    if not gate.slots.acquire(blocking=False):
        raise TooManyRequests(
            "this API instance is at its limit of concurrent requests; retry shortly",
            {"Retry-After": "1"},
        )
    try:
        yield
    finally:
        gate.slots.release()


def init_app(app: Flask) -> None:
    app.extensions["embeddings.gate"] = Gate(app.extensions["embeddings"])
    app.before_request(_check)
    app.after_request(_add_headers)
