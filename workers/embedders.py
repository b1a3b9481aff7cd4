"""What a task asks for its missing vectors: an embedder per model. Local models go
through their batcher (merged with other tasks' texts, interactive work first); remote
ones are called from the task's thread, split into calls by workers/remote.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.registry import ModelSpec
from workers.batcher import Batcher
from workers.remote import RemoteModels


class Embedder(Protocol):
    def embed(self, texts: list[str], tokens: list[int], truncate: bool, bulk: bool) -> np.ndarray:
        """A float32 row per text, in order, not normalized (`bulk`: index work)."""
        ...


@dataclass(frozen=True)
class Batched:
    batcher: Batcher

    def embed(self, texts: list[str], tokens: list[int], truncate: bool, bulk: bool) -> np.ndarray:
        # Texts were cut at the model's max_tokens before they were counted (the API).
        return self.batcher.submit(texts, tokens, bulk).result()


@dataclass(frozen=True)
class Remote:
    models: RemoteModels
    spec: ModelSpec

    def embed(self, texts: list[str], tokens: list[int], truncate: bool, bulk: bool) -> np.ndarray:
        return self.models.embed(self.spec, texts, tokens, truncate)
