"""The `debug` backend: the target model's tokenizer and limits, no forward pass.

For load tests and benchmarks of our own path (`backend = "debug"` on a local registry
entry, through MODELS_FILE; never among the shipped models): each text is cut at the
model's max tokens, and its vector is a unit vector made from a hash of the token ids
that remain (a byte of the hash per dimension), so the same text always gets the same
vector, and texts that the model would see alike get the same one.
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
        digests = b"".join(
            hashlib.shake_128(
                np.asarray(encoding.ids[: self.max_tokens], dtype=np.uint32).tobytes()
            ).digest(self.dimensions)
            for encoding in self.tokenizer.encode_batch(texts)
        )
        rows = np.frombuffer(digests, dtype=np.uint8).reshape(len(texts), self.dimensions)
        centred = rows.astype(np.float32) - np.float32(127.5)  # never a zero row
        return centred / np.linalg.norm(centred, axis=1, keepdims=True)
