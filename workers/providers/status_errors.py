"""The errors for the HTTP statuses that every provider means alike: a 429 or a 5xx is
worth another try, after the Retry-After seconds (`wait`) the provider asked for."""

from __future__ import annotations

from common.errors import ProviderUnavailable, UpstreamError


def rate_limited(provider: str, message: str, wait: float | None) -> ProviderUnavailable:
    """HTTP 429: the provider is fine but turns us away for now."""
    after = f"; asks to retry after {wait:g} s" if wait is not None else ""
    return ProviderUnavailable(
        provider, f"rate limited (HTTP 429){after}: {message}", retryable=True, retry_after=wait
    )


def server_error(
    provider: str, code: int, path: str, message: str, wait: float | None
) -> UpstreamError:
    """HTTP 5xx (or another status the provider means as "try again") from `path`."""
    return UpstreamError(
        provider, f"HTTP {code} from {path}: {message}", retryable=True, retry_after=wait
    )
