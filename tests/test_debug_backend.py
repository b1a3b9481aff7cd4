"""The debug backend: the target model's tokenizer and limits, deterministic unit vectors
from a hash of each text, no forward pass (for load tests of our own path)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient

from api.app import create_app
from common.settings import Settings, load_settings
from tests.conftest import models_file, start_worker, stop, wait_for_worker

NO_STORE = {"Cache-Control": "no-store"}


@pytest.fixture(scope="module")
def debug_client(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlaskClient]:
    tmp = tmp_path_factory.mktemp("debug")
    env = {"MODELS_FILE": str(models_file(tmp, name="debug", queue="debug", backend="debug")),
           "DEFAULT_MODEL": "debug"}  # fmt: skip
    log = tmp / "worker.log"
    worker = start_worker(settings.REDIS_URL, log, queues="debug", name="debug", **env)
    try:
        wait_for_worker(settings.REDIS_URL, worker, log, "debug")
        assert '"backend": "debug"' in log.read_text() or '"backend":"debug"' in log.read_text()
        yield create_app(load_settings(**{**settings.model_dump(), **env})).test_client()
    finally:
        stop(worker)


def vectors(client: FlaskClient, texts: list[str], **extra: object) -> np.ndarray:
    answer = client.post("/api/v1/embeddings", json={"input": texts, **extra}, headers=NO_STORE)
    assert answer.status_code == 200, answer.get_json()
    return np.array([row["embedding"] for row in answer.get_json()["data"]])


def test_same_text_same_unit_vector_and_others_differ(debug_client: FlaskClient) -> None:
    first = vectors(debug_client, ["alpha beta", "gamma delta", "alpha beta"])
    again = vectors(debug_client, ["alpha beta"])
    assert first.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(first[0], again[0])
    assert abs(float(first[0] @ first[1])) < 0.5


def test_it_keeps_the_models_truncation_and_limits(debug_client: FlaskClient) -> None:
    long = " ".join(f"word{i}" for i in range(600))
    cut, longer = vectors(debug_client, [long, long + " and a tail past the limit"])
    np.testing.assert_array_equal(cut, longer)  # both cut at the model's 256 tokens
    refused = debug_client.post("/api/v1/embeddings", json={"input": long, "truncate": False})
    assert refused.status_code == 400
    assert "at most 256" in refused.get_json()["error"]["message"]
