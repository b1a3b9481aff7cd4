"""Hostile input against every route that takes texts: each gets a clear 4xx JSON error or
a correct answer (vectors of 384 floats); none a 500, a hang or a dead worker.

Routes: the native sync and async APIs, the OpenAI and Ollama fronts and bulk index jobs.
The table runs in-process against a real worker; the SDK checks run against gunicorn.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ollama
import openai
import orjson
import psutil
import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.app import create_app
from common import presence
from common.settings import Settings, load_settings
from tests.conftest import MODEL, wait_logged
from tests.helpers import wait_job

NATIVE, JOBS, OPENAI, OLLAMA, INDEX = (
    "/api/v1/embeddings", "/api/v1/jobs", "/v1/embeddings", "/api/embed", "/api/v1/index-jobs",
)  # fmt: skip
ROUTES = (NATIVE, JOBS, OPENAI, OLLAMA, INDEX)
DIMENSIONS = 384
MAX_BYTES = 4 * 1024 * 1024
"""MAX_REQUEST_BYTES and MAX_UPLOAD_BYTES of the app under test."""
SLOW_SECONDS = 30.0
"""No answer here may take longer (a hang is a failure, not a wait)."""

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def hostile_app(settings: Settings, worker: None) -> Flask:
    overrides = {
        **settings.model_dump(),
        "MAX_REQUEST_BYTES": MAX_BYTES,
        "MAX_UPLOAD_BYTES": MAX_BYTES,
        "REQUEST_TIMEOUT_SECONDS": 20,
        # In-process clients all call from 127.0.0.1: one bucket for the whole table.
        "RATE_LIMIT_REQUESTS_PER_MINUTE": 1_000_000,
        "RATE_LIMIT_BURST": 1_000_000,
    }
    return create_app(load_settings(**overrides))


@pytest.fixture
def hc(hostile_app: Flask) -> FlaskClient:
    return hostile_app.test_client()


def call(client: FlaskClient, method: str, url: str, **kwargs: Any) -> TestResponse:
    started = time.monotonic()
    response = client.open(url, method=method, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < SLOW_SECONDS, f"{method} {url} took {elapsed:.1f}s"
    return response


def post(client: FlaskClient, route: str, data: bytes, content_type: str | None) -> TestResponse:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return call(client, "POST", route, data=data, headers=headers)


# ---------------------------------------------------------------- what an answer must be


def error_message(route: str, response: TestResponse) -> str:
    """The message of a clear JSON error in the route's own shape."""
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:300]
    error = orjson.loads(response.get_data())["error"]
    if route == OLLAMA:  # {"error": "..."}, as Ollama answers
        assert isinstance(error, str)
        return error
    assert isinstance(error, dict)
    assert isinstance(error["type"], str) and error["type"]
    assert "param" in error
    if route == OPENAI:  # {"error": {"message", "type", "param", "code"}}
        assert "code" in error
    return error["message"]


def assert_error(route: str, response: TestResponse, status: int, contains: str = "") -> str:
    body = response.get_data(as_text=True)[:300]
    assert response.status_code == status, f"{route}: {response.status_code} {body}"
    message = error_message(route, response)
    assert message.strip(), body
    assert contains in message, message[:300]
    return message


def assert_vectors(rows: list[Any], count: int) -> np.ndarray:
    assert len(rows) == count
    matrix = np.asarray(rows, dtype=np.float64)
    assert matrix.shape == (count, DIMENSIONS)
    assert np.isfinite(matrix).all()
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3)  # normalized
    return matrix


def wait_status(client: FlaskClient, url: str, timeout: float = 90) -> dict[str, Any]:
    return wait_job(lambda: call(client, "GET", url).get_json(), timeout, 0.1)


def answer_vectors(client: FlaskClient, route: str, response: TestResponse, count: int) -> Any:
    """Check a successful answer in the route's shape and return its vectors (rows)."""
    text = response.get_data(as_text=True)[:300]
    if route == JOBS:
        assert response.status_code == 202, text
        job = wait_status(client, response.get_json()["status_url"])
        assert job["status"] == "succeeded", job
        return assert_vectors([d["embedding"] for d in job["result"]["data"]], count)
    if route == INDEX:
        assert response.status_code == 202, text
        job = wait_status(client, response.get_json()["status_url"])
        assert job["status"] == "succeeded", job
        assert job["documents"] == {"total": count, "done": count, "failed": 0}
        lines = call(client, "GET", job["results_url"]).get_data().splitlines()
        rows = [orjson.loads(line) for line in lines]
        first = {r["id"]: r["embedding"] for r in reversed(rows) if r["chunk"] == 0}
        return assert_vectors([first[f"d{i}"] for i in range(count)], count)
    assert response.status_code == 200, text
    body = response.get_json()
    if route == OLLAMA:
        return assert_vectors(body["embeddings"], count)
    assert [d["index"] for d in body["data"]] == list(range(count))
    return assert_vectors([d["embedding"] for d in body["data"]], count)


# ---------------------------------------------------------------- the table


def doc_body(route: str, value: object, **extra: object) -> dict[str, object]:
    """`value` as the route's texts: `input`, or one document per text for index jobs."""
    if route == INDEX:
        texts = value if isinstance(value, list) else [value]
        documents = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
        return {"documents": documents, "model": MODEL, **extra}
    if route in (OPENAI, OLLAMA):
        return {"model": MODEL, "input": value, **extra}
    return {"input": value, **extra}


def dumps(body: object) -> bytes:
    """json, not orjson: it writes integers past 64 bits and lone surrogates (escaped)."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def as_json(value: object, **extra: object) -> Callable[[str], bytes]:
    return lambda route: dumps(doc_body(route, value, **extra))


def raw(data: bytes) -> Callable[[str], bytes]:
    return lambda route: data


def duplicate_keys(route: str) -> bytes:
    """The main key twice: the last one wins, as in every common JSON parser."""
    body = json.dumps(doc_body(route, "first"))[:-1]
    if route == INDEX:
        return (body + ', "documents": [{"id": "d0", "text": "second"}]}').encode()
    return (body + ', "input": "second"}').encode()


DEEP = 100_000

Case = tuple[Callable[[str], bytes], int | dict[str, int], str]
"""(body for a route, expected status (one, or per route with a "*" default), message part)."""

CASES: dict[str, Case] = {
    "over-the-limit": (as_json("a" * MAX_BYTES), 413, ""),
    "deep-array": (raw(b"[" * DEEP + b"]" * DEEP), 400, "depth"),
    "deep-object": (raw(b'{"a":' * DEEP + b"1" + b"}" * DEEP), 400, "depth"),
    "deep-input": (raw(b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"), 400, "depth"),
    "list-body": (raw(b'[{"input": "x"}]'), 400, "JSON object"),
    "string-body": (raw(b'"x"'), 400, "JSON object"),
    "number-body": (raw(b"42"), 400, "JSON object"),
    "null-body": (raw(b"null"), 400, "JSON object"),
    "true-body": (raw(b"true"), 400, "JSON object"),
    "empty-body": (raw(b""), 400, "empty"),
    "truncated": (raw(b'{"input": ["a", "b"'), 400, "JSON"),
    "invalid-utf8": (raw(b'{"input": "\xff\xfe\xfd", "model": "x"}'), 400, "UTF-8"),
    "utf8-encoded-surrogate": (raw(b'{"input": "\xed\xa0\x80"}'), 400, "UTF-8"),
    "overlong-utf8": (raw(b'{"input": "\xc0\xaf"}'), 400, "UTF-8"),
    "bom": (raw(b'\xef\xbb\xbf{"input": "x"}'), 400, "JSON"),
    "lone-high-surrogate": (raw(b'{"input": "\\ud800"}'), 400, "surrogate"),
    "lone-low-surrogate": (raw(b'{"input": ["ok", "x\\udfff"]}'), 400, "surrogate"),
    "raw-nul": (raw(b'{"input": "a\x00b"}'), 400, "control character"),
    "nan": (raw(b'{"input": "x", "dimensions": NaN}'), 400, "JSON"),
    "infinity": (raw(b'{"input": "x", "dimensions": 1e999}'), 400, "infinity"),
    "number-input": (as_json(42), 400, ""),
    "numbers-in-list": (as_json([1.5, "x"]), 400, ""),
    "object-input": (as_json({"text": "x"}), 400, ""),
    "number-model": (as_json("x", model=7), 400, ""),
    "huge-int-dimensions": (as_json("x", dimensions=10**30), 400, "dimensions"),
    "huge-int-input": (as_json([10**30]), 400, ""),
    "negative-dimensions": (as_json("x", dimensions=-1), 400, "dimensions"),
    "null-input": (as_json(None), 400, ""),
    "null-in-list": (as_json(["x", None]), 400, ""),
    "null-everywhere": (
        as_json(None, model=None, normalize=None, truncate=None, dimensions=None),
        400,
        "",
    ),
    "empty-list": (as_json([]), 400, ""),
    "whitespace-only": (as_json(["ok", " \t\n\u3000"]), 400, "empty"),
    "long-model-name": (as_json("x", model="m" * 1_000_000), 404, "mmmm"),
    "traversal-model-name": (as_json("x", model="../../../etc/passwd"), 404, "passwd"),
    "header-like-model-name": (as_json("x", model="a\r\nSet-Cookie: x=1"), 404, ""),
    "bool-for-normalize": (as_json("x", normalize="yes"), {"*": 400, OPENAI: 200, OLLAMA: 200}, ""),
}
"""Every route: the same hostile bodies. The OpenAI front ignores fields that are not
OpenAI's (normalize), and the Ollama front always normalizes /api/embed."""


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bodies(hc: FlaskClient, route: str, case: str) -> None:
    make, expected, contains = CASES[case]
    status = expected if isinstance(expected, int) else expected.get(route, expected["*"])
    response = post(hc, route, make(route), "application/json")
    if status == 200:
        answer_vectors(hc, route, response, 1)
    else:
        assert_error(route, response, status, contains)


CONTENT_TYPES: dict[str | None, int | dict[str, int]] = {
    None: 415,
    "text/plain": 415,
    "text/plain; charset=utf-8": 415,
    "application/x-www-form-urlencoded": 415,
    "application/xml": 415,
    "application/json-patch+json": 415,
    "*/*": 415,
    "multipart/form-data; boundary=x": {"*": 415, INDEX: 400},  # index: no file field
    "application/x-ndjson": {"*": 415, INDEX: 400},  # index: the line has no id
    "application/json; charset=utf-16": {"*": 200, INDEX: 202},  # JSON is UTF-8 (RFC 8259)
    "APPLICATION/JSON": {"*": 200, INDEX: 202},
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("content_type", list(CONTENT_TYPES), ids=str)
def test_content_types(hc: FlaskClient, route: str, content_type: str | None) -> None:
    expected = CONTENT_TYPES[content_type]
    status = expected if isinstance(expected, int) else expected.get(route, expected["*"])
    response = post(hc, route, orjson.dumps(doc_body(route, "plain text")), content_type)
    if status in (200, 202):
        answer_vectors(hc, route, response, 1)
    else:
        assert_error(route, response, status)


AWKWARD_TEXTS: dict[str, list[str]] = {
    "nul-bytes": ["a\x00b", "\x00\x00 nul \x00"],
    "emoji": ["😀🧪👩‍👩‍👧‍👦 🇺🇦", "🏳️‍🌈" * 50],
    "right-to-left": ["שלום עולם", "مرحبا بالعالم", "\u202eevil.exe\u202c", "abc \u05d0\u05d1 def"],
    "invisible": ["\u200b", "\ufeff", "\u0001\u0002\u007f", "\u00ad"],
    "combining": ["e\u0301" * 200, "Z\u0351\u0352\u0353\u0354" * 30],
    "astral-and-cjk": [
        "\U0001d573\U0001d58a\U0001d591 \U00013000",
        "漢字かなカナ한국어",
        "\U0010ffff",
    ],
}


@pytest.mark.parametrize("name", list(AWKWARD_TEXTS))
def test_awkward_texts_embed_alike_on_every_route(hc: FlaskClient, name: str) -> None:
    """Valid if odd text: the same vectors from every route (NULs, emoji, RTL, invisibles)."""
    texts = AWKWARD_TEXTS[name]
    answers = {}
    for route in ROUTES:
        response = post(hc, route, orjson.dumps(doc_body(route, texts)), "application/json")
        answers[route] = answer_vectors(hc, route, response, len(texts))
    for route, matrix in answers.items():
        assert np.allclose(matrix, answers[NATIVE], atol=1e-4), route


@pytest.mark.parametrize("route", ROUTES)
def test_duplicate_keys_last_one_wins(hc: FlaskClient, route: str) -> None:
    response = post(hc, route, duplicate_keys(route), "application/json")
    second = post(hc, NATIVE, orjson.dumps({"input": "second"}), "application/json")
    assert np.allclose(
        answer_vectors(hc, route, response, 1), answer_vectors(hc, NATIVE, second, 1)
    )


INDEX_CASES: dict[str, tuple[object, int]] = {
    "huge-int-id": ({"id": 10**30, "text": "x"}, 400),
    "float-id": ({"id": 1.5, "text": "x"}, 400),
    "bool-id": ({"id": True, "text": "x"}, 400),
    "null-id": ({"id": None, "text": "x"}, 400),
    "object-id": ({"id": {"a": 1}, "text": "x"}, 400),
    "number-text": ({"id": "a", "text": 5}, 400),
    "deep-metadata": (
        {"id": "a", "text": "x", "metadata": {"a": json.loads("[" * 500 + "]" * 500)}},
        400,
    ),
    "metadata-not-object": ({"id": "a", "text": "x", "metadata": [1]}, 400),
    "nul-and-traversal-id": ({"id": "../\x00/..", "text": "x", "metadata": {"\x00": "\x00"}}, 202),
    "negative-id": ({"id": -(2**63), "text": "x", "metadata": {"big": 10**30}}, 202),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_hostile_documents(hc: FlaskClient, case: str) -> None:
    document, status = INDEX_CASES[case]
    response = post(hc, INDEX, dumps({"documents": [document]}), "application/json")
    if status == 202:
        assert response.status_code == 202, response.get_data(as_text=True)
        job = wait_status(hc, response.get_json()["status_url"])
        assert job["status"] == "succeeded", job
        rows = [orjson.loads(x) for x in call(hc, "GET", job["results_url"]).data.splitlines()]
        assert [r["id"] for r in rows] == [str(document["id"])]  # type: ignore[index]
        assert_vectors([r["embedding"] for r in rows], 1)
    else:
        assert_error(INDEX, response, status, "documents[0]")


def test_hostile_documents_upload_as_ndjson(hc: FlaskClient) -> None:
    lines = [dumps(doc) for doc, _ in INDEX_CASES.values()] + [b"[" * DEEP, b"\xff{"]
    response = post(hc, INDEX, b"\n".join(lines), "application/x-ndjson")
    message = assert_error(INDEX, response, 400, "bad document(s)")
    assert "line 11" in message and "line 12" in message
    skipped = call(hc, "POST", f"{INDEX}?on_error=skip", data=b"\n".join(lines),
                   headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
    assert skipped.status_code == 202, skipped.get_data(as_text=True)
    assert skipped.get_json()["documents"] == 2
    assert wait_status(hc, skipped.get_json()["status_url"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "input": [[1, 2], 5]},  # was a 500: an id where a list belongs
        {"model": MODEL, "input": [[1], 2.5]},  # was a 500
        {"model": MODEL, "input": [True, False]},  # was a 200: booleans taken as ids 1, 0
        {"model": MODEL, "input": [[101], [True]]},  # was a 200
        {"model": MODEL, "input": [-1]},
        {"model": MODEL, "input": [2**63 - 1]},
        {"model": MODEL, "input": [[]]},
        {"model": 5, "input": [1, 2]},  # was a 500: a number for the model, with token ids
        {"model": [MODEL], "input": [[1]]},  # was a 500
    ],
    ids=str,
)
def test_hostile_token_ids_on_the_openai_front(hc: FlaskClient, body: dict[str, object]) -> None:
    assert_error(OPENAI, post(hc, OPENAI, dumps(body), "application/json"), 400)


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/index-jobs?limit=\u00b2",  # was a 500: '²'.isdigit() but int('²') fails
        "/api/v1/index-jobs?limit=\u0663",  # an Arabic-Indic 3: not an ASCII integer either
        "/api/v1/index-jobs?limit=99999999999999999999999",
        "/api/v1/index-jobs?limit=-1",
        "/api/v1/index-jobs?cursor=" + base64.urlsafe_b64encode(b"nan|job_x").decode(),  # was 500
        "/api/v1/index-jobs?cursor=" + base64.urlsafe_b64encode(b"inf|job_x").decode(),
        "/api/v1/index-jobs?cursor=%%%",
        "/api/v1/index-jobs?cursor=" + "A" * 10_000,
        "/v1/batches?limit=\u00b2",  # was a 500
    ],
    ids=lambda u: u[:60],
)
def test_hostile_query_parameters(hc: FlaskClient, url: str) -> None:
    response = call(hc, "GET", url)
    assert_error(OPENAI if url.startswith("/v1/") else NATIVE, response, 400)


HOSTILE_IDS = [
    "..", "../..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "....//",
    "%5c..%5cwindows", "job_x%00y", "%00", "*", "job_*", "%ff%fe", "%ed%a0%80",
    "job_%0d%0aSet-Cookie:%20x=1", "{job_id}", "~root", "a%20b", "%3f", "x" * 10_000,
]  # fmt: skip


@pytest.mark.parametrize("base", ["/api/v1/jobs/", "/api/v1/index-jobs/"])
@pytest.mark.parametrize("job_id", HOSTILE_IDS, ids=lambda s: s[:24])
def test_hostile_job_ids(hc: FlaskClient, base: str, job_id: str) -> None:
    urls = [base + job_id] + ([base + job_id + "/results"] if "index" in base else [])
    for url in urls:
        for method in ("GET", "DELETE"):
            response = call(hc, method, url)
            if response.status_code == 308:  # werkzeug merges '//': a same-site redirect
                assert response.headers["Location"].startswith(f"http://localhost{base}")
                continue
            # 404 (no such job, or the path is no route at all) or 405 (a route, but
            # not for this method): never the contents of something else.
            assert response.status_code in (404, 405), (method, url, response.status_code)
            error_message(NATIVE, response)
            assert "Set-Cookie" not in response.headers


# ---------------------------------------------------------------- the most work one call takes


def long_texts(settings: Settings, count: int) -> list[str]:
    """`count` distinct texts, each far past the model's 256 tokens, filling the body limit."""
    size = (MAX_BYTES - 64 * 1024) // count
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "ünïcödé", "שלום", "😀"]
    texts = []
    for i in range(count):
        text = f"text {i}: " + " ".join(words[(i + j) % len(words)] for j in range(size // 6))
        texts.append(text.encode()[: size - 8].decode(errors="ignore"))
    return texts


def test_most_and_longest_inputs_async_then_cancelled(
    hc: FlaskClient, settings: Settings, worker_log: Path
) -> None:
    """MAX_INPUTS texts, each past the model's limit, in a body at the size limit: accepted
    at once as a job (counted and queued), and cancelled before the worker starts on it."""
    texts = long_texts(settings, settings.MAX_INPUTS)
    data = orjson.dumps({"input": texts})
    assert MAX_BYTES - 128 * 1024 < len(data) <= MAX_BYTES
    accepted = post(hc, JOBS, data, "application/json")
    assert accepted.status_code == 202, accepted.get_data(as_text=True)[:300]
    cancelled = call(hc, "DELETE", accepted.get_json()["status_url"]).get_json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["count"] == settings.MAX_INPUTS
    assert cancelled["started_at"] is None, "the worker began the job before DELETE came"
    # The worker takes the message and drops it: it never runs.
    job_id = accepted.get_json()["id"]
    wait_logged(worker_log, f"job {job_id} is finished, cancelled or expired: skipped")
    assert call(hc, "GET", accepted.get_json()["status_url"]).get_json()["started_at"] is None


def test_one_overlong_input_among_the_most_is_named(hc: FlaskClient, settings: Settings) -> None:
    """truncate=false: refused whole, naming the one text past the limit; nothing queued.
    (The OpenAI front truncates by design, so it is not asked.)"""
    texts = [f"short text number {i}" for i in range(settings.MAX_INPUTS)]
    texts[1500] = "overlong " * 600
    for route in (NATIVE, JOBS, OLLAMA):
        body = dumps({**doc_body(route, texts), "truncate": False})
        response = post(hc, route, body, "application/json")
        message = assert_error(route, response, 400, "input[1500]")
        assert "256" in message
        if route != OLLAMA:
            assert response.get_json()["error"]["param"] == "input[1500]"
    too_many = orjson.dumps({"input": ["x"] * (settings.MAX_INPUTS + 1)})
    assert_error(NATIVE, post(hc, NATIVE, too_many, "application/json"), 400, "at most")


# ---------------------------------------------------------------- giant inputs


PROSE = "lorem ipsum dolor sit amet "


def test_a_giant_string_is_cut_before_it_is_tokenized(hc: FlaskClient) -> None:
    """3 MB in one text: cut at the model's character bound, so answered at once, with the
    vector of its first 256 tokens; with truncate=false, refused naming input[0]."""
    giant = PROSE * (3_000_000 // len(PROSE))
    started = time.monotonic()
    response = post(hc, NATIVE, orjson.dumps({"input": giant}), "application/json")
    took = time.monotonic() - started
    vector = answer_vectors(hc, NATIVE, response, 1)[0]
    assert took < 3, f"{took:.1f}s: was it tokenized whole?"
    head = post(hc, NATIVE, orjson.dumps({"input": PROSE * 100}), "application/json")
    assert np.dot(vector, answer_vectors(hc, NATIVE, head, 1)[0]) > 0.9999
    started = time.monotonic()
    body = orjson.dumps({"input": ["fine", giant], "truncate": False})
    message = assert_error(NATIVE, post(hc, NATIVE, body, "application/json"), 400, "input[1]")
    assert "256" in message
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("shape", ["ndjson", "multipart", "json"])
def test_a_document_past_max_document_bytes_is_413_naming_it(hc: FlaskClient, shape: str) -> None:
    limit = load_settings().MAX_DOCUMENT_BYTES
    docs = [{"id": "ok", "text": "fine"}, {"id": "big", "text": "x" * (2 * limit)}]
    lines = b"\n".join(orjson.dumps(d) for d in docs)
    if shape == "ndjson":
        response = post(hc, INDEX, lines, "application/x-ndjson")
    elif shape == "multipart":
        form = {"file": (io.BytesIO(lines), "docs.jsonl")}
        response = call(hc, "POST", INDEX, data=form, content_type="multipart/form-data")
    else:
        response = post(hc, INDEX, orjson.dumps({"documents": docs}), "application/json")
    where = "documents[1]" if shape == "json" else "line 2"
    message = assert_error(INDEX, response, 413, where)
    assert "MAX_DOCUMENT_BYTES" in message and str(limit) in message


def _api_workers_rss() -> list[int]:
    """RSS of the live API's gunicorn workers (this test's children)."""
    procs = [p for p in psutil.Process().children(recursive=True)
             if "api.wsgi:app" in " ".join(p.cmdline())]  # fmt: skip
    masters = {p.pid for p in procs}
    return [p.memory_info().rss for p in procs if p.ppid() in masters]


def test_giant_inputs_leave_the_api_memory_flat(live_api: str) -> None:
    """Through gunicorn with the default limits: a 10 MB string is answered in seconds and
    a 20 MB NDJSON line is refused (413, naming it) after reading MAX_DOCUMENT_BYTES; the
    API's workers grow by little (they grew by ~1 GB each before the bounds)."""
    before = _api_workers_rss()
    giant = PROSE * (10_000_000 // len(PROSE))
    started = time.monotonic()
    answer = requests.post(f"{live_api}{NATIVE}", json={"input": giant}, timeout=60)
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text[:300]
    assert took < 6, f"{took:.1f}s"
    line = b'{"id": "huge", "text": "' + b"x" * 20_000_000 + b'"}\n'
    refused = requests.post(f"{live_api}{INDEX}", data=line, timeout=60,
                            headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
    assert refused.status_code == 413, refused.text[:300]
    assert "line 1" in refused.json()["error"]["message"]
    after = _api_workers_rss()
    growth = [(a - b) / 2**20 for a, b in zip(after, before, strict=True)]
    print(f"API workers' RSS MiB before {[b // 2**20 for b in before]}, after "
          f"{[a // 2**20 for a in after]}; 10 MB string answered in {took:.2f}s")  # fmt: skip
    assert max(growth) < 250, growth


# ---------------------------------------------------------------- with the official SDKs


def test_sdks_with_awkward_and_hostile_input(live_api: str) -> None:
    """What a user of the openai and ollama SDKs sees, through gunicorn."""
    client = openai.OpenAI(base_url=f"{live_api}/v1", api_key="unused", max_retries=0)
    texts = AWKWARD_TEXTS["emoji"] + AWKWARD_TEXTS["right-to-left"] + AWKWARD_TEXTS["nul-bytes"]
    result = client.embeddings.create(model=MODEL, input=texts, timeout=30)
    assert_vectors([d.embedding for d in result.data], len(texts))
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input=["ok", " \u3000\n"], timeout=30)
    assert "empty" in bad.value.message  # (the SDK itself cannot send a lone surrogate)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="m" * 100_000, input="x", timeout=30)
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input=[[1, 2], 3], timeout=30)  # type: ignore[list-item]
    assert bad.value.body["param"] == "input[1]"  # type: ignore[index]

    local = ollama.Client(host=live_api, timeout=30)
    vectors = local.embed(model=MODEL, input=AWKWARD_TEXTS["right-to-left"]).embeddings
    assert_vectors(list(vectors), len(AWKWARD_TEXTS["right-to-left"]))
    with pytest.raises(ollama.ResponseError) as missing:
        local.embed(model="../../etc/passwd", input="x")
    assert missing.value.status_code == 404

    # A body past MAX_REQUEST_BYTES through gunicorn: 413 JSON, not a reset connection.
    limit = load_settings().MAX_REQUEST_BYTES
    big = b'{"input": "' + b"a" * limit + b'"}'
    response = requests.post(f"{live_api}{NATIVE}", data=big, timeout=60,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 413
    assert response.json()["error"]["type"]


# ---------------------------------------------------------------- and afterwards


def test_after_the_table_the_worker_still_serves(
    hc: FlaskClient, settings: Settings, redis_url: str
) -> None:
    response = post(
        hc, NATIVE, orjson.dumps({"input": ["still alive?", "yes"]}), "application/json"
    )
    answer_vectors(hc, NATIVE, response, 2)
    health = call(hc, "GET", "/health").get_json()
    assert health["status"] == "ok"
    assert any(w["name"].startswith("test@") and MODEL in w["models"] for w in health["workers"])
    client = redis.Redis.from_url(redis_url)
    assert any(w.name.startswith("test@") for w in presence.online(client))
