"""Token counts for local models in the API (Rust `tokenizers`, no torch).

The tokenizer is the model's own tokenizer.json, so counts equal what the worker's model
sees: usage figures, the truncate=false check, chunking and the worker's batch budget
all use them. Models without one (remote providers) are estimated from characters.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

CHARS_PER_TOKEN = 4
"""Estimate for models whose tokenizer the API does not have."""


@lru_cache(maxsize=16)
def load(path: Path) -> Tokenizer:
    """The tokenizer, with the file's own truncation and padding switched off."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def token_lengths(tokenizer_file: Path | None, texts: list[str]) -> list[int]:
    """Untruncated token counts, special tokens included, one per text."""
    if tokenizer_file is None:
        return [len(text) // CHARS_PER_TOKEN + 1 for text in texts]
    return [len(encoding.ids) for encoding in load(tokenizer_file).encode_batch(texts)]
