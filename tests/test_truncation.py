"""Over-long inputs: truncated by default, refused by name with truncate=false."""

from __future__ import annotations

import numpy as np
from flask.testing import FlaskClient

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
