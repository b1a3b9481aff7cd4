"""The official openai and ollama SDKs against the service, unchanged but for the URL."""

from __future__ import annotations

import base64

import numpy as np
import ollama
import openai
import pytest
import requests

from common.registry import load_registry
from common.settings import Settings
from common.tokenization import load
from tests.conftest import MODEL

TEXTS = ["The cat sat on the mat.", "Vectors for search and retrieval."]


@pytest.fixture(scope="module")
def client(live_api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_api}/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def native(live_api: str) -> np.ndarray:
    body = requests.post(f"{live_api}/api/v1/embeddings", json={"input": TEXTS}, timeout=60)
    return np.array([item["embedding"] for item in body.json()["data"]])


def close(a: object, b: object) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float32), b, atol=1e-6)


def test_openai_string_and_list_inputs(client: openai.OpenAI, native: np.ndarray) -> None:
    one = client.embeddings.create(model=MODEL, input=TEXTS[0])
    assert one.object == "list" and one.model == MODEL
    assert one.data[0].object == "embedding" and one.data[0].index == 0
    close(one.data[0].embedding, native[0])
    both = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert [d.index for d in both.data] == [0, 1]
    close([d.embedding for d in both.data], native)
    assert both.usage.prompt_tokens == both.usage.total_tokens > 0


def test_openai_base64_is_little_endian_float32(live_api: str, native: np.ndarray) -> None:
    body = requests.post(
        f"{live_api}/v1/embeddings",
        json={"model": MODEL, "input": TEXTS, "encoding_format": "base64", "user": "u1"},
        timeout=60,
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]]
    close(decoded, native)


def test_openai_token_id_inputs(
    client: openai.OpenAI, native: np.ndarray, settings: Settings
) -> None:
    tokenizer = load(load_registry(settings).get(MODEL).tokenizer_file())  # type: ignore[arg-type]
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    many = client.embeddings.create(model=MODEL, input=ids)
    single = client.embeddings.create(model=MODEL, input=ids[0])
    close([d.embedding for d in many.data], native)
    close(single.data[0].embedding, native[0])


def test_openai_dimensions(client: openai.OpenAI) -> None:
    same = client.embeddings.create(model=MODEL, input="x", dimensions=384)
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MODEL, input="x", dimensions=128)
    assert "does not support" in str(raised.value)
    assert raised.value.body["param"] == "dimensions"


def test_openai_errors_map_to_sdk_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="no-such-model", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=[[10**9]])


def test_openai_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_ollama_embed_and_legacy(live_api: str, native: np.ndarray) -> None:
    client = ollama.Client(host=live_api)
    one = client.embed(model=MODEL, input=TEXTS[0])
    close(one.embeddings[0], native[0])
    many = client.embed(model=MODEL, input=TEXTS, truncate=True, keep_alive="5m")
    close(many.embeddings, native)
    assert many.prompt_eval_count > 0 and many.total_duration > 0
    legacy = client.embeddings(model=MODEL, prompt=TEXTS[1])
    raw = np.asarray(legacy.embedding)
    assert abs(np.linalg.norm(raw) - 1) > 1e-3  # Ollama's legacy route is not normalized
    close(raw / np.linalg.norm(raw), native[1])


def test_ollama_list_show_version_and_errors(live_api: str) -> None:
    client = ollama.Client(host=live_api)
    assert MODEL in [m.model for m in client.list().models]
    shown = client.show(MODEL)
    assert "embedding" in shown.capabilities
    assert shown.modelinfo["embedding_length"] == 384
    assert requests.get(f"{live_api}/api/version", timeout=10).json()["version"]
    with pytest.raises(ollama.ResponseError) as raised:
        client.embed(model="no-such-model", input="x")
    assert raised.value.status_code == 404
    assert "not found" in raised.value.error
