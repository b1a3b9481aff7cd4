"""Retries with backoff and a circuit breaker around every remote provider call.

Retries (tenacity): a call that fails with a retryable error (429, 5xx, connection errors)
is tried again up to PROVIDER_MAX_RETRIES times. It waits what the provider's Retry-After
asks, else exponential backoff with jitter, at most PROVIDER_RETRY_MAX_WAIT_SECONDS; a
Retry-After longer than that is not waited out: the call fails at once and says so.
Timeouts are not retried: a provider that hung once is likely to hang again, and the client
is waiting.

Circuit breaker (in Redis, so every thread of every worker shares it and /health shows
it): after PROVIDER_BREAKER_FAILURES calls in a row end in an outage (the retryable errors
above, or a timeout), calls fail fast with a 503 for PROVIDER_BREAKER_OPEN_SECONDS. Then
one trial call goes through: if it succeeds the breaker closes, if not it opens again.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import redis
import tenacity

from common import keys, providers
from common.errors import ProviderError, ProviderUnavailable, ServiceError
from common.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

FAILURES_TTL_SECONDS = 3600
"""A run of failures older than this is forgotten (a provider called rarely starts afresh)."""


class CircuitBreaker:
    """Closed -> open after N failed calls in a row -> half-open (one trial) -> closed."""

    def __init__(
        self,
        client: redis.Redis,
        provider: str,
        failures_to_open: int,
        open_seconds: float,
        trial_seconds: float,
    ) -> None:
        self.redis = client
        self.provider = provider
        self.failures_to_open = failures_to_open
        self.open_ms = max(1, int(open_seconds * 1000))
        # A trial whose worker died must not block the provider for ever.
        self.trial_ms = max(1, int(trial_seconds * 1000))
        self._failures = keys.breaker(provider, "failures")
        self._open = keys.breaker(provider, "open")
        self._trial = keys.breaker(provider, "trial")

    def before_call(self) -> bool:
        """Let a call through (True: it is the trial call) or raise ProviderUnavailable."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(self._open)
            pipe.get(self._failures)
            open_ms, failures = pipe.execute()
        if open_ms and open_ms > 0:
            raise providers.breaker_open_error(self.provider, int(failures or 0), open_ms / 1000)
        if int(failures or 0) < self.failures_to_open:
            return False
        if self.redis.set(self._trial, "1", nx=True, px=self.trial_ms):
            log.info("%s: circuit breaker half-open: trial call", self.provider)
            return True
        raise ProviderUnavailable(
            self.provider, "recovering: a trial call is testing it; try again shortly",
            retry_after=1.0,
        )  # fmt: skip

    def is_open(self) -> bool:
        return bool(self.redis.exists(self._open))

    def succeeded(self) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.getdel(self._failures)
            pipe.delete(self._trial)
            failures, _ = pipe.execute()
        if int(failures or 0) >= self.failures_to_open:
            log.warning("%s: circuit breaker closed: the provider answers again", self.provider)

    def failed(self) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(self._failures)
            pipe.expire(self._failures, FAILURES_TTL_SECONDS)
            failures, _ = pipe.execute()
        if failures >= self.failures_to_open:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._open, "1", px=self.open_ms)
                pipe.delete(self._trial)
                pipe.execute()
            log.warning(
                "%s: circuit breaker open after %d failed calls in a row: failing fast for %.1f s",
                self.provider, failures, self.open_ms / 1000,
            )  # fmt: skip

    def release_trial(self) -> None:
        self.redis.delete(self._trial)


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
