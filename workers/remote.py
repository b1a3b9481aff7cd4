"""Remote models (Ollama, OpenAI): what a worker on the `remote` queue runs instead of a batcher.

Each task thread calls its provider directly: the provider batches on its side, and a
slow call holds only its own thread. A task's distinct texts go out in order, in calls of
at most the provider's and the model's input limits and the provider's token budget, each
through the provider's retries and circuit breaker (workers/providers/resilience.py).
Every answer is checked: one vector per input, all of the model's dimensions (the
registry's, or those its first answer had, kept in Redis).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import redis

from common import dimensions, providers
from common.errors import ModelNotFound, ProviderError, UpstreamError
from common.registry import ModelSpec, Provider, Registry
from common.settings import Settings
from workers.providers.base import RemoteProvider
from workers.providers.resilience import Resilient

log = logging.getLogger(__name__)

PROBE_SECONDS = 30.0
"""How often a remote worker asks Ollama what is pulled (GET /api/tags costs nothing)."""
REPROBE_MIN_SECONDS = 2.0


def plan_calls(tokens: list[int], max_inputs: int, max_tokens: int | None) -> list[slice]:
    """Consecutive slices of at most `max_inputs` texts and `max_tokens` tokens (a single
    text over the budget goes alone: the provider truncates or refuses it)."""
    calls: list[slice] = []
    start, budget = 0, 0
    for i, n in enumerate(tokens):
        full = i - start >= max_inputs or (max_tokens is not None and budget + n > max_tokens)
        if i > start and full:
            calls.append(slice(start, i))
            start, budget = i, 0
        budget += n
    if tokens:
        calls.append(slice(start, len(tokens)))
    return calls


class RemoteModels:
    """The providers one worker process calls: one client each, shared by all task threads."""

    def __init__(self, settings: Settings, registry: Registry, client: redis.Redis) -> None:
        self.settings = settings
        self.registry = registry
        self.redis = client
        self._clients: dict[Provider, tuple[RemoteProvider, Resilient]] = {}
        self._lock = threading.Lock()
        self._probed_at = 0.0

    def served(self) -> list[str]:
        """Registry models whose provider this worker can reach (named in its heartbeat)."""
        return sorted(
            spec.name
            for spec in self.registry
            if spec.enabled
            and spec.provider in providers.REMOTE
            and providers.missing_setting(self.settings, spec.provider) is None
        )

    def client(self, provider: Provider) -> tuple[RemoteProvider, Resilient]:
        with self._lock:
            if provider not in self._clients:
                self._clients[provider] = (
                    self._build(provider),
                    Resilient(provider.value, self.settings, self.redis),
                )
            return self._clients[provider]

    def _build(self, provider: Provider) -> RemoteProvider:
        if provider is Provider.OLLAMA:
            from workers.providers.ollama import OllamaProvider

            return OllamaProvider(self.settings)
        from workers.providers.openai_compat import OpenAIProvider

        return OpenAIProvider(self.settings)

    def embed(
        self, spec: ModelSpec, texts: list[str], tokens: list[int], truncate: bool
    ) -> np.ndarray:
        """Raw float32 rows for `texts`, in order; each distinct text is sent once."""
        providers.require_configured(self.settings, spec)
        provider, guard = self.client(spec.provider)
        position: dict[str, int] = {}
        distinct: list[str] = []
        lengths: list[int] = []
        for text, n in zip(texts, tokens, strict=True):
            if text not in position:
                position[text] = len(distinct)
                distinct.append(text)
                lengths.append(n)
        limit = min(provider.max_inputs, spec.batch_size or provider.max_inputs)
        expected = spec.dimensions or dimensions.learned(self.redis, spec.name)
        parts: list[np.ndarray] = []
        for part in plan_calls(lengths, limit, provider.max_request_tokens):
            batch = distinct[part]
            try:
                matrix = guard.call(lambda batch=batch: provider.embed(spec, batch, truncate))  # type: ignore[misc]
            except ModelNotFound:
                if spec.provider is Provider.OLLAMA:
                    self.probe_ollama(min_age=REPROBE_MIN_SECONDS)  # /models shows it at once
                raise
            expected = self._check(spec, matrix, len(batch), expected)
            parts.append(matrix)
        rows = np.concatenate(parts)
        return rows[[position[text] for text in texts]]

    def _check(self, spec: ModelSpec, matrix: np.ndarray, count: int, expected: int | None) -> int:
        name = spec.provider.value
        if matrix.ndim != 2 or len(matrix) != count:
            raise UpstreamError(name, f"answered {len(matrix)} vectors for {count} inputs")
        got = int(matrix.shape[1])
        if expected is None:
            expected = dimensions.learn(self.redis, spec.name, got, self.settings.CACHE_TTL_SECONDS)
        if got != expected:
            source = "the registry says" if spec.dimensions else "its earlier answers had"
            raise UpstreamError(
                name,
                f"answered {got}-dimensional vectors for {spec.name!r}; {source} {expected}",
            )
        if not np.isfinite(matrix).all():
            raise UpstreamError(
                name, f"answered vectors with NaN or infinite values ({spec.name!r})"
            )
        return expected

    def probe_ollama(self, min_age: float = 0.0) -> None:
        """Record what Ollama has pulled (or that it is unreachable) for /health and /models."""
        if providers.missing_setting(self.settings, Provider.OLLAMA) is not None:
            return
        if time.monotonic() - self._probed_at < min_age:
            return
        self._probed_at = time.monotonic()
        provider = self.client(Provider.OLLAMA)[0]
        try:
            models = provider.pulled()  # type: ignore[attr-defined]
        except ProviderError as error:
            log.info("ollama probe: %s", error.message)
            providers.record_error(self.redis, Provider.OLLAMA.value, error)
        else:
            providers.record_models(self.redis, Provider.OLLAMA.value, models)

    def probe_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.probe_ollama()
            except redis.RedisError as error:  # Redis away for a moment: next round
                log.warning("ollama probe not recorded: %s", error)
            stop.wait(PROBE_SECONDS)
