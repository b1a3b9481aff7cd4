"""The contracts providers implement: texts in, raw float32 vectors out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.registry import ModelSpec


class Encoder(Protocol):
    name: str
    dimensions: int
    device: str
    precision: str
    """The weights' number format as run: float16 (torch on CUDA), float32, int8."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """One forward pass: a float32 row per text, in order, not normalized."""
        ...


class RemoteProvider(Protocol):
    """A provider behind HTTP (Ollama, OpenAI-compatible): one client per worker process,
    called from many task threads at once."""

    name: str
    max_inputs: int
    """Most texts one call may carry."""
    max_request_tokens: int | None
    """Most (estimated) tokens one call may carry; None: no limit."""

    def embed(self, spec: ModelSpec, texts: list[str], truncate: bool) -> np.ndarray:
        """One HTTP call: a float32 row per text, in order. Raises ProviderError kinds
        (retryable ones for 429, 5xx and connection errors), ProviderRejected or
        ModelNotFound; never retries itself."""
        ...
