"""Token counts for local models in the API (Rust `tokenizers`, no torch).

The tokenizer is the model's own tokenizer.json, so counts equal what the worker's model
sees: usage figures, the truncate=false check, chunking and the worker's batch budget
all use them. Models without one (remote providers) are estimated from characters.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from common.lru import LRU

CHARS_PER_TOKEN = 4
"""Estimate for models whose tokenizer the API does not have."""
MEMO_SIZE = 65_536
"""Token counts remembered per tokenizer (by a digest of the text, not the text): a cache
hit then costs no tokenization, which was a third of its time."""


@lru_cache(maxsize=16)
def load(path: Path) -> Tokenizer:
    """The tokenizer, with the file's own truncation and padding switched off."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@lru_cache(maxsize=16)
def _memo(path: Path) -> LRU[bytes, int]:
    return LRU(MEMO_SIZE)


def token_lengths(tokenizer_file: Path | None, texts: list[str]) -> list[int]:
    """Untruncated token counts, special tokens included, one per text."""
    if tokenizer_file is None:
        return [len(text) // CHARS_PER_TOKEN + 1 for text in texts]
    memo = _memo(tokenizer_file)
    digests = [hashlib.blake2b(text.encode(), digest_size=16).digest() for text in texts]
    found = memo.get_many(digests)
    missing = [i for i, count in enumerate(found) if count is None]
    if missing:
        encodings = load(tokenizer_file).encode_batch([texts[i] for i in missing])
        for i, encoding in zip(missing, encodings, strict=True):
            found[i] = len(encoding.ids)
        memo.put_many((digests[i], found[i]) for i in missing)
    return found  # type: ignore[return-value]
