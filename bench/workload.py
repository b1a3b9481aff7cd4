"""The texts, and how they are cut into requests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHUNK = 32
"""Texts per request, per raw encode call and per encode batch."""


def load_texts(path: Path, limit: int) -> list[str]:
    """The `text` of the first `limit` lines of a JSONL file."""
    texts = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if len(texts) == limit:
                break
            if line.strip():
                texts.append(json.loads(line)["text"])
    return texts


def chunks(texts: list[str], size: int = CHUNK) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


@dataclass(frozen=True)
class Workload:
    texts: list[str]
    singles: list[str]
    """The texts of the one-text latency runs."""
    repeat: int
