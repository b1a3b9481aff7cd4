"""Every bad input gets a clear 4xx JSON error; nothing a client sends gives a 500."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from api.errors import status_of
from common import errors
from common.settings import Settings

URL = "/api/v1/embeddings"


def assert_error(response, status: int, param: str | None = None, contains: str = "") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) >= {"type", "message", "param"}
    assert error["param"] == param
    assert contains in error["message"]


@pytest.mark.parametrize("url", [URL, "/api/v1/jobs"])
@pytest.mark.parametrize(
    ("body", "param", "contains"),
    [
        ({"input": []}, "input", "empty list"),
        ({"input": ""}, "input", "empty"),
        ({"input": ["ok", "  "]}, "input", "empty"),
        ({"input": [1, 2]}, "input[0]", "valid string"),
        ({"input": 42}, "input", ""),
        ({"input": [["nested"]]}, "input[0]", "valid string"),
        ({"input": "x", "normalize": "yes"}, "normalize", "boolean"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
        ({"input": "x", "model": 7}, "model", "string"),
        ({"input": "x", "surprise": 1}, "surprise", "Extra inputs"),
        ({"texts": ["x"]}, "input", "required"),
    ],
)
def test_invalid_bodies(
    bare_client: FlaskClient, url: str, body: dict, param: str, contains: str
) -> None:
    assert_error(bare_client.post(url, json=body), 400, param, contains)


def test_more_than_max_inputs(bare_client: FlaskClient, settings: Settings) -> None:
    body = {"input": ["x"] * (settings.MAX_INPUTS + 1)}
    assert_error(bare_client.post(URL, json=body), 400, "input", "at most 2048")


@pytest.mark.parametrize(
    "data",
    [b"{not json", b'{"input": "x"', b"\xff\xfe{}", b"", b'{"input": "\\ud800"}', b"[" * 5000],
    ids=["syntax", "truncated", "bad-utf8", "empty", "lone-surrogate", "deep-nesting"],
)
def test_malformed_json(bare_client: FlaskClient, data: bytes) -> None:
    response = bare_client.post(URL, data=data, content_type="application/json")
    assert_error(response, 400, "body")


@pytest.mark.parametrize("data", [b'[{"input": "x"}]', b'"x"', b"3", b"null"])
def test_body_must_be_an_object(bare_client: FlaskClient, data: bytes) -> None:
    response = bare_client.post(URL, data=data, content_type="application/json")
    assert_error(response, 400, "body", "JSON object")


def test_wrong_content_type(bare_client: FlaskClient) -> None:
    response = bare_client.post(
        URL, data="input=x", content_type="application/x-www-form-urlencoded"
    )
    assert_error(response, 415, None, "application/json")


def test_body_over_the_limit(bare_client: FlaskClient, settings: Settings) -> None:
    data = b'{"input": "' + b"a" * settings.MAX_REQUEST_BYTES + b'"}'
    response = bare_client.post(URL, data=data, content_type="application/json")
    assert_error(response, 413)


def test_unknown_model_is_named(bare_client: FlaskClient) -> None:
    response = bare_client.post(URL, json={"input": "x", "model": "no-such-model"})
    assert_error(response, 404, "model", "'no-such-model'")


def test_unknown_job(bare_client: FlaskClient) -> None:
    assert_error(bare_client.get("/api/v1/jobs/job_nope"), 404, "id", "job_nope")
    assert_error(bare_client.delete("/api/v1/jobs/job_nope"), 404, "id")


def test_unknown_route_and_wrong_method(bare_client: FlaskClient) -> None:
    assert_error(bare_client.get("/api/v1/nothing-here"), 404)
    response = bare_client.get(URL)
    assert_error(response, 405)
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("worker_lost", 503),  # its message was lost with a worker: send it again
        ("deadline_exceeded", 504),
        ("invalid_request_error", 400),
        ("model_not_found", 404),
        ("provider_unavailable", 503),
        ("upstream_error", 502),
        ("upstream_timeout", 504),
        ("sink_error", 503),
        ("internal_error", 500),
        ("never_heard_of", 500),
    ],
)
def test_a_failed_jobs_type_answers_its_class_status(kind: str, status: int) -> None:
    """A sync call whose job failed answers the status of the error class the worker
    stored (api/errors.py reads the classes; no second table to forget one in)."""
    error = errors.JobFailed("it failed", "job_x", kind)
    assert status_of(error) == status
