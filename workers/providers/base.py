"""The contract every provider implements: texts in, raw float32 vectors out."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Encoder(Protocol):
    name: str
    dimensions: int
    device: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """One forward pass: a float32 row per text, in order, not normalized."""
        ...
