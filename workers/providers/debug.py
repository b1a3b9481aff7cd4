"""The `debug` backend: the target model's tokenizer and limits, no forward pass.

For load tests and benchmarks of our own path (`backend = "debug"` on a local registry
entry, through MODELS_FILE; never among the shipped models): each text is cut at the
model's max tokens, and its vector is a unit vector drawn from a hash of the token ids
that remain, so the same text always gets the same vector, and texts that the model would
see alike get the same one.
"""

from __future__ import annotations

import hashlib

import numpy as np

from common.registry import ModelSpec
from common.tokenization import load


class DebugEncoder:
    device = "cpu"
    precision = "none"

    def __init__(self, spec: ModelSpec) -> None:
        tokenizer_file = spec.tokenizer_file()
        if tokenizer_file is None or spec.dimensions is None:
            raise ValueError(f"model {spec.name}: the debug backend needs a tokenizer.json "
                             "and dimensions")  # fmt: skip
        self.name = spec.name
        self.dimensions = spec.dimensions
        self.max_tokens = spec.max_tokens
        self.tokenizer = load(tokenizer_file)

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for row, encoding in zip(rows, self.tokenizer.encode_batch(texts), strict=True):
            ids = np.asarray(encoding.ids[: self.max_tokens], dtype=np.uint32).tobytes()
            seed = int.from_bytes(hashlib.blake2b(ids, digest_size=8).digest(), "little")
            vector = np.random.default_rng(seed).standard_normal(self.dimensions)
            row[:] = vector / np.linalg.norm(vector)
        return rows
