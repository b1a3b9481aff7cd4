"""Who is calling, and may they: API keys, per-caller rate limits, sync concurrency.

Auth is on as soon as one key exists (or with AUTH_REQUIRED=true); until then the service
runs open, as the local launcher says at start-up. Keys come as `Authorization: Bearer`
(the OpenAI SDK's way) or `X-API-Key`. Every job, batch and file belongs to the key that
made it (`owner()`); other keys get 404 for it, not 403.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, Response, current_app, g, request

from api.services import Services, services
from common import keys
from common.api_keys import KeyStore
from common.errors import TooManyRequests, Unauthorized
from common.rate_limit import Decision, RateLimiter

OPEN_OWNER = "public"
PUBLIC_PATHS = ("/livez", "/readyz", "/health", "/openapi.json", "/docs")
"""Orchestrator probes and the API docs answer without a key."""
KEYS_CHECK_SECONDS = 1.0


class Gate:
    """Per process: whether any key exists (re-read every second) and the sync slots."""

    def __init__(self, svc: Services) -> None:
        self.keys = KeyStore(svc.redis)
        self.limiter = RateLimiter(
            svc.settings.RATE_LIMIT_REQUESTS_PER_MINUTE, svc.settings.RATE_LIMIT_BURST
        )
        self.required = svc.settings.AUTH_REQUIRED
        self._checked = (0.0, False)
        self.slots = threading.BoundedSemaphore(svc.settings.sync_slots_per_process())

    def auth_on(self) -> bool:
        if self.required:
            return True
        checked_at, on = self._checked
        if time.monotonic() - checked_at > KEYS_CHECK_SECONDS:
            on = self.keys.any()
            self._checked = (time.monotonic(), on)
        return on


def _gate() -> Gate:
    return current_app.extensions["embeddings.gate"]


def _presented() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key")


def _check() -> None:
    if request.path.startswith(PUBLIC_PATHS):
        return
    gate = _gate()
    if gate.auth_on():
        presented = _presented()
        if not presented:
            raise Unauthorized(
                "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
            )
        key = gate.keys.verify(presented)
        if key is None:
            raise Unauthorized("the API key is not valid (revoked, or never issued)")
        g.owner, caller = key.id, key.id
    else:  # open: whatever key a client sends (SDKs insist on one) is ignored
        g.owner, caller = OPEN_OWNER, f"ip:{request.remote_addr}"
    decision = _admit(gate, keys.rate_bucket(caller))
    g.rate_headers = decision.headers()
    if not decision.allowed:
        raise TooManyRequests(
            f"rate limit of {decision.limit} requests (refilling at "
            f"{services().settings.RATE_LIMIT_REQUESTS_PER_MINUTE}/min) reached",
            g.rate_headers,
        )


def _admit(gate: Gate, bucket: str) -> Decision:
    """The caller's rate-limit token, and the cache's clear counter for this request
    (`g.cache_epoch`, common/cache.py), in one round trip: a cache hit needs no other."""
    svc = services()
    with svc.redis.pipeline(transaction=False) as pipe:
        gate.limiter.take_in(pipe, bucket)
        svc.cache.read_epoch_in(pipe)
        replies = pipe.execute()
    g.cache_epoch = svc.cache.epoch_from(replies[1])
    return gate.limiter.decision(replies[0])


def _add_headers(response: Response) -> Response:
    for name, value in g.get("rate_headers", {}).items():
        response.headers.setdefault(name, value)
    return response


def owner() -> str:
    """The key id of the caller (OPEN_OWNER while the service runs open)."""
    return g.get("owner", OPEN_OWNER)


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
