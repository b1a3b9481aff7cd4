"""Token counts for local models in the API (Rust `tokenizers`, no torch).

The tokenizer is the model's own tokenizer.json, so counts equal what the worker's model
sees: usage figures, the truncate=false check and the worker's batch budget all use them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer


@lru_cache(maxsize=16)
def _load(path: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def token_lengths(tokenizer_file: Path, texts: list[str]) -> list[int]:
    """Untruncated token counts, special tokens included, one per text."""
    encodings = _load(tokenizer_file).encode_batch(texts)
    return [len(encoding.ids) for encoding in encodings]
