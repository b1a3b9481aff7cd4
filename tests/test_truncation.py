"""Over-long inputs: truncated by default, refused by name with truncate=false."""

from __future__ import annotations

import random

import numpy as np
from flask.testing import FlaskClient

from common.registry import load_registry
from common.settings import load_settings
from common.tokenization import char_limit, cut_at, load
from tests.conftest import MODEL

LONG = " ".join(f"word{i}" for i in range(1500))  # far beyond 256 tokens


def test_long_text_is_truncated_by_default(client: FlaskClient) -> None:
    response = client.post("/api/v1/embeddings", json={"input": ["short", LONG]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["usage"]["prompt_tokens"] == 3 + 256
    prefix = client.post("/api/v1/embeddings", json={"input": LONG[: len(LONG) // 2]}).get_json()
    cosine = np.dot(body["data"][1]["embedding"], prefix["data"][0]["embedding"])
    assert cosine > 0.999  # the tail past 256 tokens is cut, so only the head counts


def test_long_text_is_refused_by_index_when_truncate_is_false(client: FlaskClient) -> None:
    response = client.post("/api/v1/embeddings", json={"input": ["short", LONG], "truncate": False})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "input[1]"
    assert "256" in error["message"]
    ok = client.post("/api/v1/embeddings", json={"input": "short", "truncate": False})
    assert ok.status_code == 200


def test_the_character_bound_never_changes_what_the_model_reads() -> None:
    """tokenization.char_limit: a cut text's first 256 tokens are the whole text's, for
    prose, code, CJK, emoji and long words; a text within 256 tokens is never cut."""
    spec = load_registry(load_settings()).get(MODEL)
    path, limit = spec.tokenizer_file(), char_limit(spec.tokenizer_file(), spec.max_tokens)
    tokenizer = load(path)
    rng = random.Random(15)
    alphabet = [
        "lorem",
        "ipsum",
        "漢字かな",
        "😀🧪",
        "x" * 99,
        "def f(x):",
        "\u00e9t\u00e9",
        "a" * 40,
    ]
    for _ in range(30):
        words = [rng.choice(alphabet) for _ in range(rng.randint(100, 8_000))]
        text = "".join(w + rng.choice([" ", "\n", "  \t", ""]) for w in words)
        full = tokenizer.encode(text).ids
        end = cut_at(text, limit)
        if len(full) <= spec.max_tokens:
            assert end is None
        if end is not None:
            assert tokenizer.encode(text[:end]).ids[: spec.max_tokens] == full[: spec.max_tokens]
    unknown = "x" * 98 + "\u2603"  # one [UNK] of 99 characters
    fits = ["lorem" + " " * 100_000 + "ipsum", " \n".join([unknown] * 254), "漢" * 250]
    for text in fits:
        assert len(tokenizer.encode(text).ids) <= spec.max_tokens
        assert cut_at(text, limit) is None
