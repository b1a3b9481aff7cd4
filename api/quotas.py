"""Counting each request's input tokens against the caller's key: its usage, and its
tokens per minute, day and month (common/usage.py), refused with 429 and the limit's name
when spent. One Redis round trip per request made with a key."""

from __future__ import annotations

from api.services import Services
from common.api_keys import ApiKey
from common.errors import InvalidRequest, TooManyRequests
from common.usage import Mode


def charge(
    svc: Services, key: ApiKey | None, model: str, tokens: int, hit: bool = False,
    mode: Mode = "charge",
) -> None:  # fmt: skip
    """Count one request of `key` (see common.usage.Mode); 429 if it would pass a quota.
    Calls without a key (open mode) are not counted: they cost no round trip."""
    if key is None:
        return
    refusal = svc.usage.charge(key.id, model, tokens, hit, key.limits, mode)
    if refusal is None:
        return
    name = refusal.limit.replace("_", " ")
    if tokens > refusal.allowed:
        raise InvalidRequest(
            f"input: {tokens} tokens is more than this key's {name} limit of {refusal.allowed}",
            param="input",
        )
    raise TooManyRequests(
        f"this key's quota of {refusal.allowed} {name} is reached ({refusal.used} used); "
        f"it resets in {refusal.retry_after}s",
        {"Retry-After": str(refusal.retry_after)},
    )
