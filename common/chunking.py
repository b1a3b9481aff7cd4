"""Splitting documents into model-sized chunks that keep character offsets.

Local models: by the model's own tokenizer, windows of `max_tokens` (special tokens
included) overlapping by `overlap_tokens`. Models without a tokenizer in the API (remote
providers): by characters, CHARS_PER_TOKEN per token, each cut moved back to the last
whitespace in the window's final fifth when there is one, so words stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.tokenization import CHARS_PER_TOKEN, load

SPECIAL_TOKENS = 2  # [CLS] ... [SEP]: room kept in every window


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    end: int
    tokens: int


def _windows(count: int, size: int, overlap: int) -> list[tuple[int, int]]:
    step = max(size - overlap, 1)
    starts = range(0, max(count - overlap, 1), step)
    return [(s, min(s + size, count)) for s in starts]


def _token_chunks(
    text: str, offsets: list[tuple[int, int]], max_tokens: int, overlap: int
) -> list[Chunk]:
    size = max(max_tokens - SPECIAL_TOKENS, 1)
    if len(offsets) <= size:
        return [Chunk(0, 0, len(text), len(offsets) + SPECIAL_TOKENS)]
    return [
        Chunk(i, offsets[a][0], offsets[b - 1][1], b - a + SPECIAL_TOKENS)
        for i, (a, b) in enumerate(_windows(len(offsets), size, overlap))
    ]


def by_characters(text: str, max_tokens: int, overlap: int) -> list[Chunk]:
    size, back = max_tokens * CHARS_PER_TOKEN, overlap * CHARS_PER_TOKEN
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", end - size // 5, end)
            end = cut if cut > start else end
        chunks.append(Chunk(len(chunks), start, end, (end - start) // CHARS_PER_TOKEN + 1))
        if end >= len(text):
            return chunks
        start = max(end - back, start + 1)


def split_many(
    tokenizer_file: Path | None, texts: list[str], max_tokens: int, overlap: int
) -> list[list[Chunk]]:
    """Each text's chunks. The tokenizer takes the texts in one call: tokenizers runs them in
    parallel, without the GIL, at a fraction of a call per text's cost."""
    if tokenizer_file is None:
        return [by_characters(text, max_tokens, overlap) for text in texts]
    encodings = load(tokenizer_file).encode_batch(texts, add_special_tokens=False)
    return [
        _token_chunks(text, encoding.offsets, max_tokens, overlap)
        for text, encoding in zip(texts, encodings, strict=True)
    ]


def split(tokenizer_file: Path | None, text: str, max_tokens: int, overlap: int) -> list[Chunk]:
    return split_many(tokenizer_file, [text], max_tokens, overlap)[0]
