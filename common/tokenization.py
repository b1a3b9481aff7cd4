"""Token counts for local models in the API (Rust `tokenizers`, no torch).

The tokenizer is the model's own tokenizer.json, so counts equal what the worker's model
sees: usage figures, the truncate=false check, chunking and the worker's batch budget
all use them. Models without one (remote providers) are estimated from characters.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from common.lru import LRU

CHARS_PER_TOKEN = 4
"""Estimate for models whose tokenizer the API does not have."""
REMOTE_SPAN = 128
"""Most characters one token of a remote model is taken to cover (see `char_limit`)."""
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


@lru_cache(maxsize=16)
def _longest_span(path: Path) -> int:
    model = load(path).model
    longest = max(len(token) for token in load(path).get_vocab())
    return max(longest, getattr(model, "max_input_chars_per_word", 0))


def char_limit(tokenizer_file: Path | None, max_tokens: int) -> int:
    """How many characters, whitespace not counted, `max_tokens` tokens can span at most.

    Every token covers at most as many characters as its longest vocabulary entry (which
    counts the `##` or `▁` marks and byte-level escapes, so it never under-counts), or, for
    WordPiece, `max_input_chars_per_word` (a word of up to that many characters the vocab
    cannot split is one [UNK]). Whitespace between tokens is not counted, as it adds none
    to a BERT-style tokenizer's count. One span more keeps whole the word that holds the
    last token. So cutting a text after this many non-whitespace characters changes none
    of its first `max_tokens` tokens, and a text with more cannot fit. The exceptions are
    inputs no prose has: over-long words of a WordPiece vocabulary (one [UNK] whatever
    their length) and runs of characters the normalizer deletes (control characters).
    Remote models' tokenizers are unknown here: REMOTE_SPAN characters each.
    """
    span = REMOTE_SPAN if tokenizer_file is None else _longest_span(tokenizer_file)
    return (max_tokens + 1) * span


@lru_cache(maxsize=64)
def _first_chars(limit: int) -> re.Pattern[str]:
    return re.compile(rf"(?:\s*\S){{{limit}}}")


def cut_at(text: str, limit: int) -> int | None:
    """Where a text passes `limit` non-whitespace characters (None: it never does); a
    regular-expression scan in C, about 10 ms per MB at worst."""
    if len(text) <= limit:
        return None
    found = _first_chars(limit).match(text)
    return None if found is None or found.end() == len(text) else found.end()
