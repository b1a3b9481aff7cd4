"""Sync embeddings end to end with the real shipped model and a real worker."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sentence_transformers import SentenceTransformer

from api.app import create_app
from common.registry import load_registry
from common.settings import Settings, load_settings
from tests.conftest import MODEL

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Redis keeps the queue, the results and the cache.",
    "Embeddings turn text into vectors.",
]


@pytest.fixture(scope="module")
def reference(settings: Settings) -> SentenceTransformer:
    path = load_registry(settings).get(MODEL).local_path()
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def decode(item: dict, encoding_format: str) -> np.ndarray:
    if encoding_format == "base64":
        return np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    return np.asarray(item["embedding"], dtype=np.float32)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_vectors_equal_sentence_transformers(
    client: FlaskClient, reference: SentenceTransformer, encoding_format: str
) -> None:
    response = client.post(
        "/api/v1/embeddings", json={"input": TEXTS, "encoding_format": encoding_format}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model"] == MODEL
    assert body["dimensions"] == 384
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    expected = reference.encode(TEXTS)
    for item, want in zip(body["data"], expected, strict=True):
        got = decode(item, encoding_format)
        assert got.shape == (384,)
        cosine = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
        assert cosine > 0.9999


def test_single_string_and_usage_counts_real_tokens(
    client: FlaskClient, reference: SentenceTransformer
) -> None:
    body = client.post("/api/v1/embeddings", json={"input": TEXTS[0]}).get_json()
    assert len(body["data"]) == 1
    tokens = len(reference.tokenizer(TEXTS[0])["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_normalize_false_keeps_the_raw_length(client: FlaskClient) -> None:
    raw = client.post("/api/v1/embeddings", json={"input": TEXTS, "normalize": False}).get_json()
    unit = client.post("/api/v1/embeddings", json={"input": TEXTS}).get_json()
    raw_vectors = np.array([item["embedding"] for item in raw["data"]])
    unit_vectors = np.array([item["embedding"] for item in unit["data"]])
    np.testing.assert_allclose(np.linalg.norm(unit_vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.abs(np.linalg.norm(raw_vectors, axis=1) - 1.0) > 1e-3)
    rescaled = raw_vectors / np.linalg.norm(raw_vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(rescaled, unit_vectors, atol=1e-5)


def test_many_inputs_come_back_in_input_order(client: FlaskClient) -> None:
    texts = [f"sentence number {i} " + "word " * (i % 17) for i in range(100)]
    body = client.post("/api/v1/embeddings", json={"input": texts}).get_json()
    one_by_one = [
        client.post("/api/v1/embeddings", json={"input": texts[i]}).get_json()["data"][0]
        for i in (0, 41, 99)
    ]
    for i, single in zip((0, 41, 99), one_by_one, strict=True):
        np.testing.assert_allclose(body["data"][i]["embedding"], single["embedding"], atol=1e-5)


@pytest.fixture
def impatient_app(settings: Settings) -> Flask:
    return create_app(load_settings(**{**settings.model_dump(), "REQUEST_TIMEOUT_SECONDS": 0.05}))


def test_timed_out_sync_call_answers_504_and_the_job_completes(
    impatient_app: Flask, worker: None
) -> None:
    client = impatient_app.test_client()
    texts = [f"a longer passage of text, number {i}, " * 8 for i in range(300)]
    response = client.post("/api/v1/embeddings", json={"input": texts})
    assert response.status_code == 504
    error = response.get_json()["error"]
    assert error["type"] == "timeout"
    assert error["status_url"] == f"/api/v1/jobs/{error['job_id']}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(error["status_url"]).get_json()
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert job["status"] == "succeeded"
    assert len(job["result"]["data"]) == 300
