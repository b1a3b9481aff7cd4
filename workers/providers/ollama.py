"""Ollama through the official `ollama` client: batched POST /api/embed, GET /api/tags.

One client (an httpx connection pool) per worker process, shared by every task thread.
The client turns HTTP errors into ResponseError without the response headers, so an event
hook keeps each thread's last Retry-After.
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
import ollama

from common.errors import (
    ModelNotFound,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from common.providers import pull_hint
from common.registry import ModelSpec
from common.settings import Settings
from workers.providers.resilience import clip, retry_after
from workers.providers.status_errors import rate_limited, server_error

NAME = "ollama"
CONNECT_TIMEOUT_SECONDS = 5.0


def keep_alive(value: str) -> float | str:
    """Ollama reads a number as seconds and a string as a Go duration ("5m"); "-1" is -1 s."""
    try:
        return float(value)
    except ValueError:
        return value


class OllamaProvider:
    name = NAME
    max_inputs = 2048
    max_request_tokens = None

    def __init__(self, settings: Settings) -> None:
        timeout = self._timeout = settings.PROVIDER_TIMEOUT_SECONDS
        self._local = threading.local()
        self._keep_alive = keep_alive(settings.OLLAMA_KEEP_ALIVE)
        self._client = ollama.Client(
            host=settings.OLLAMA_URL,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS)),
            event_hooks={"response": [self._remember_retry_after]},
        )

    def _remember_retry_after(self, response: httpx.Response) -> None:
        self._local.retry_after = (
            retry_after(response.headers) if response.status_code >= 400 else None
        )

    def embed(self, spec: ModelSpec, texts: list[str], truncate: bool) -> np.ndarray:
        try:
            answer = self._client.embed(
                model=spec.target,
                input=texts,
                truncate=truncate,
                keep_alive=self._keep_alive,
                dimensions=spec.dimensions if spec.supports_dimensions else None,
            )
        except ollama.ResponseError as error:
            raise self._status_error(spec, error) from None
        except Exception as error:
            raise self._transport_error(error, "/api/embed") from None
        try:
            matrix = np.asarray(answer.embeddings, dtype=np.float32)
        except (ValueError, TypeError):
            raise UpstreamError(NAME, "/api/embed answered vectors of unequal length") from None
        if matrix.ndim != 2 or len(matrix) != len(texts):
            raise UpstreamError(
                NAME, f"/api/embed answered {len(matrix)} vectors for {len(texts)} inputs"
            )
        return matrix

    def pulled(self) -> list[str]:
        """The models pulled into Ollama (GET /api/tags), by their full names."""
        try:
            listed = self._client.list()
        except ollama.ResponseError as error:
            raise UpstreamError(
                NAME, f"/api/tags answered HTTP {error.status_code}: {clip(error.error)}"
            ) from None
        except Exception as error:
            raise self._transport_error(error, "/api/tags") from None
        return [m.model for m in listed.models if m.model]

    def _status_error(self, spec: ModelSpec, error: ollama.ResponseError) -> Exception:
        code, message = error.status_code, clip(error.error)
        if code == 404:
            return ModelNotFound(spec.name, f"{pull_hint(spec.target)} (ollama: {message})")
        if code == 400:
            return ProviderRejected(NAME, message)
        wait = getattr(self._local, "retry_after", None)
        if code == 429:
            return rate_limited(NAME, message, wait)
        if code >= 500:
            return server_error(NAME, code, "/api/embed", message, wait)
        return ProviderUnavailable(NAME, f"refused the call (HTTP {code}): {message}")

    def _transport_error(self, error: Exception, path: str) -> ProviderError:
        """The client's own errors: no connection, a timeout, or an answer that is not JSON."""
        if isinstance(error, ConnectionError | httpx.ConnectError | httpx.ConnectTimeout):
            return ProviderUnavailable(
                NAME, "cannot connect to the Ollama server at OLLAMA_URL", retryable=True
            )
        if isinstance(error, httpx.TimeoutException):
            return UpstreamTimeout(NAME, f"no answer from {path} within {self._timeout:g} s")
        if isinstance(error, httpx.TransportError):
            return ProviderUnavailable(
                NAME, f"connection failed ({type(error).__name__})", retryable=True
            )
        if isinstance(error, ValueError | TypeError):  # bad JSON, or JSON of the wrong shape
            return UpstreamError(NAME, f"{path} answered malformed JSON")
        raise error
