"""OpenAI and OpenAI-compatible servers (text-embeddings-inference, vLLM, Infinity) through
the official `openai` client: POST {OPENAI_BASE_URL}/embeddings.

Vectors come back as base64 float32 (encoding_format=base64: about a quarter of the bytes
of JSON floats) and are read with numpy straight from the bytes. The client's own retries
are off: workers/providers/resilience.py retries, so that every provider follows the same
rules and feeds the same breaker. The API key goes only into the client; every message
made from what a server answers is scrubbed of it.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import openai

from common.errors import (
    ModelNotFound,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from common.registry import ModelSpec
from common.settings import Settings
from workers.providers.resilience import clip, retry_after
from workers.providers.status_errors import rate_limited, server_error

NAME = "openai"
MAX_INPUTS = 2048
"""OpenAI takes at most 2048 inputs per call."""
MAX_REQUEST_TOKENS = 250_000
"""OpenAI's limit is 300,000 tokens per call; token counts for remote models are estimates
(characters / 4), so keep a margin."""
CHARS_PER_TOKEN_FLOOR = 3
"""truncate=true cuts a text to max_tokens * this many characters: few texts have fewer
characters per token, so the provider does not refuse them as too long."""


class OpenAIProvider:
    name = NAME
    max_inputs = MAX_INPUTS
    max_request_tokens = MAX_REQUEST_TOKENS

    def __init__(self, settings: Settings) -> None:
        key = settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else ""
        self._secrets = (key,) if key else ()
        self._timeout = settings.PROVIDER_TIMEOUT_SECONDS
        self._client = openai.OpenAI(
            # Compatible servers often need no key; the client insists on one.
            api_key=key or "no-key",
            base_url=settings.OPENAI_BASE_URL or None,
            timeout=settings.PROVIDER_TIMEOUT_SECONDS,
            max_retries=0,
        )
        self._embeddings = self._client.embeddings

    def embed(self, spec: ModelSpec, texts: list[str], truncate: bool) -> np.ndarray:
        if truncate:
            limit = spec.max_tokens * CHARS_PER_TOKEN_FLOOR
            texts = [text[:limit] for text in texts]
        extra = {"dimensions": spec.dimensions} if spec.supports_dimensions else {}
        try:
            answer = self._embeddings.create(
                model=spec.target, input=texts, encoding_format="base64", **extra
            )
        except openai.APIStatusError as error:
            raise self._status_error(spec, error) from None
        except openai.APITimeoutError:
            raise UpstreamTimeout(
                NAME, f"no answer from /embeddings within {self._timeout:g} s"
            ) from None
        except openai.APIConnectionError:
            raise ProviderUnavailable(
                NAME, f"cannot connect to {self._where()}", retryable=True
            ) from None
        except (openai.APIResponseValidationError, ValueError, TypeError):
            raise UpstreamError(NAME, "/embeddings answered malformed JSON") from None
        return self._matrix(answer, len(texts))

    def _matrix(self, answer: object, count: int) -> np.ndarray:
        try:
            items = sorted(answer.data, key=lambda item: item.index)  # type: ignore[attr-defined]
            rows = [_vector(item.embedding) for item in items]
            if [item.index for item in items] != list(range(count)):
                raise UpstreamError(
                    NAME, f"/embeddings answered {len(items)} vectors for {count} inputs"
                )
            return np.stack(rows) if rows else np.empty((0, 0), np.float32)
        except ProviderError:
            raise
        except (AttributeError, TypeError, ValueError, binascii.Error):
            raise UpstreamError(
                NAME, "/embeddings answered vectors that cannot be read (bad base64 or lengths)"
            ) from None

    def _where(self) -> str:
        return "OPENAI_BASE_URL" if self._client.base_url.host != "api.openai.com" else "OpenAI"

    def _status_error(self, spec: ModelSpec, error: openai.APIStatusError) -> Exception:
        code = error.status_code
        body = error.body
        detail = body.get("message", body) if isinstance(body, dict) else body or error.message
        message = clip(detail, self._secrets)
        wait = retry_after(error.response.headers)
        if code in (400, 413, 422):
            return ProviderRejected(NAME, message)
        if code in (401, 403):
            return ProviderUnavailable(
                NAME, f"refused our credentials (HTTP {code}); check OPENAI_API_KEY: {message}"
            )
        if code == 404:
            return ModelNotFound(spec.name, f"openai has no model {spec.target!r} ({message})")
        if code == 429:
            if getattr(error, "code", None) == "insufficient_quota":
                return ProviderUnavailable(NAME, f"quota exhausted (HTTP 429): {message}")
            return rate_limited(NAME, message, wait)
        if code >= 500 or code in (408, 409):
            return server_error(NAME, code, "/embeddings", message, wait)
        return UpstreamError(NAME, f"HTTP {code} from /embeddings: {message}")


def _vector(embedding: object) -> np.ndarray:
    """base64 little-endian float32 (what we ask for), or a JSON list from a server that
    ignores encoding_format."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)
