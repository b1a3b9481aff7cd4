"""Retries with backoff and a circuit breaker around every remote provider call.

Retries (tenacity): a call that fails with a retryable error (429, 5xx, connection errors)
is tried again up to PROVIDER_MAX_RETRIES times. It waits what the provider's Retry-After
asks, else exponential backoff with jitter, at most PROVIDER_RETRY_MAX_WAIT_SECONDS; a
Retry-After longer than that is not waited out: the call fails at once and says so.
Timeouts are not retried: a provider that hung once is likely to hang again, and the client
is waiting.

Circuit breaker (common/breaker.py): after PROVIDER_BREAKER_FAILURES calls in a row end
in an outage (the retryable errors above, or a timeout), calls fail fast with a 503 for
PROVIDER_BREAKER_OPEN_SECONDS; then one trial call decides.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import redis
import tenacity

from common import providers
from common.breaker import CircuitBreaker
from common.errors import ProviderError, ServiceError
from common.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class Resilient:
    """One provider's calls: breaker first, then the call with bounded retries."""

    def __init__(self, provider: str, settings: Settings, client: redis.Redis) -> None:
        self.provider = provider
        self.redis = client
        self.max_wait = settings.PROVIDER_RETRY_MAX_WAIT_SECONDS
        attempts = settings.PROVIDER_MAX_RETRIES + 1
        longest_call = settings.PROVIDER_TIMEOUT_SECONDS * attempts + self.max_wait * (attempts - 1)
        self.breaker = CircuitBreaker(
            client, provider, settings.PROVIDER_BREAKER_FAILURES,
            settings.PROVIDER_BREAKER_OPEN_SECONDS, trial_seconds=longest_call + 5,
        )  # fmt: skip
        self._backoff = tenacity.wait_exponential_jitter(
            initial=settings.PROVIDER_RETRY_BACKOFF_SECONDS,
            max=self.max_wait,
            jitter=settings.PROVIDER_RETRY_BACKOFF_SECONDS,
        )
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._worth_retrying),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def call(self, fn: Callable[[], T]) -> T:
        """fn() through the breaker and the retries; its final error is raised as it is."""
        trial = self.breaker.before_call()
        try:
            result = self._retrying.copy()(fn)
        except ServiceError as error:
            providers.record_error(self.redis, self.provider, error)
            if providers.is_outage(error):
                self.breaker.failed()
            else:  # it answered (a 400, a missing model): the provider itself is fine
                self.breaker.succeeded()
            raise
        except BaseException:
            if trial:
                self.breaker.release_trial()
            raise
        self.breaker.succeeded()
        providers.record_ok(self.redis, self.provider)
        return result

    def _worth_retrying(self, error: BaseException) -> bool:
        if not isinstance(error, ProviderError) or not error.retryable:
            return False
        if error.retry_after is not None and error.retry_after > self.max_wait:
            return False  # the provider asks for longer than we hold a worker thread
        return not self.breaker.is_open()  # opened meanwhile by other calls: stop here

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ProviderError) and error.retry_after is not None:
            return error.retry_after
        return self._backoff(state)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s (attempt %d); retrying in %.2f s",
            error.message if isinstance(error, ServiceError) else repr(error),
            state.attempt_number, wait,
        )  # fmt: skip


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    try:
        if value := headers.get("retry-after-ms"):
            return max(0.0, float(value) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def clip(text: object, secrets: tuple[str, ...] = (), limit: int = 300) -> str:
    """A provider's error text fit for a client and a log: one line, short, no secrets."""
    out = " ".join(str(text).split())
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out if len(out) <= limit else out[: limit - 1] + "…"
