"""Each remote provider's circuit breaker, kept in Redis so that every thread of every
worker shares it, the API can fail fast before queueing, and /health can show it.

Closed -> open after `failures_to_open` calls in a row ended in an outage -> after
`open_seconds`, half-open: one trial call goes through; if it succeeds the breaker closes,
if not it opens again. Keys: redis_keys.breaker(provider, "failures" | "open" | "trial").
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal

import redis

from common import redis_keys
from common.errors import ProviderUnavailable

log = logging.getLogger(__name__)

FAILURES_TTL_SECONDS = 3600
"""A run of failures older than this is forgotten (a provider called rarely starts afresh)."""


@dataclass(frozen=True)
class BreakerState:
    state: Literal["closed", "open", "half_open"]
    failures: int
    retry_in_s: float | None = None
    """While open: how long it stays open."""

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def open_error(self, provider: str) -> ProviderUnavailable:
        seconds = self.retry_in_s or 0.0
        return ProviderUnavailable(
            provider,
            f"circuit breaker open after {self.failures} failed calls in a row; "
            f"failing fast for {seconds:.1f} s more",
            retry_after=seconds,
        )


def queue_open_check(pipe: redis.client.Pipeline, provider: str) -> None:
    """Queue, in a caller's pipeline, the read whose reply is positive while `provider`'s
    breaker is open (the PTTL of its `open` key): /metrics reads every provider at once."""
    pipe.pttl(redis_keys.breaker(provider, "open"))


class CircuitBreaker:
    def __init__(
        self,
        client: redis.Redis,
        provider: str,
        failures_to_open: int,
        open_seconds: float = 0.0,
        trial_seconds: float = 0.0,
    ) -> None:
        """`open_seconds` and `trial_seconds` matter only to the side that calls the
        provider (the worker); reading the state needs neither."""
        self.redis = client
        self.provider = provider
        self.failures_to_open = failures_to_open
        self.open_ms = max(1, int(open_seconds * 1000))
        # A trial whose worker died must not block the provider for ever.
        self.trial_ms = max(1, int(trial_seconds * 1000))
        self._failures = redis_keys.breaker(provider, "failures")
        self._open = redis_keys.breaker(provider, "open")
        self._trial = redis_keys.breaker(provider, "trial")

    def state(self) -> BreakerState:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(self._open)
            pipe.get(self._failures)
            open_ms, failures_raw = pipe.execute()
        failures = int(failures_raw or 0)
        if open_ms and open_ms > 0:
            return BreakerState("open", failures, round(open_ms / 1000, 1))
        return BreakerState(
            "half_open" if failures >= self.failures_to_open else "closed", failures
        )

    def before_call(self) -> bool:
        """Let a call through (True: it is the trial call) or raise ProviderUnavailable."""
        state = self.state()
        if state.state == "open":
            raise state.open_error(self.provider)
        if state.state == "closed":
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
