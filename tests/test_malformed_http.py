"""Malformed HTTP, written to the socket of the API under gunicorn: what gunicorn itself
answers (bad request lines and headers, long URLs) and what a chunked body can do wrong.
Every answer is our JSON error, never an HTML page and never a 500."""

from __future__ import annotations

import socket

import orjson
import pytest
import requests

from common.settings import load_settings
from tests.conftest import MODEL

EMBED = (
    b"POST /api/v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\n"
)


def exchange(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data`, read the answer until the server closes: status, headers, body."""
    host, port = url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:  # closed with part of a long request unread
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def native_error(status: int, headers: dict[str, str], body: bytes) -> str:
    """The message of our native error shape {"error": {"type", "message", "param"}}."""
    assert headers["content-type"] == "application/json", body[:300]
    error = orjson.loads(body)["error"]
    assert isinstance(error["type"], str) and error["type"], error
    assert "param" in error
    return error["message"]


GUNICORN_CASES: dict[str, tuple[bytes, int, str]] = {
    "control-character-in-a-header": (
        b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Thing: a\x01b\r\n\r\n", 400, "X-THING",
    ),
    "a-10-kb-url": (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414, "large"),
    "bad-content-length": (EMBED + b"Content-Length: abc\r\n\r\n{}", 400, "CONTENT-LENGTH"),
    "two-content-lengths": (
        EMBED + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "CONTENT-LENGTH",
    ),
    "bad-request-line": (b"GET\r\n\r\n", 400, "Invalid"),
    "bad-http-version": (b"GET /livez HTTP/9.x\r\nHost: test\r\n\r\n", 400, "HTTP Version"),
    "a-huge-header": (
        b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431, "",
    ),
    "an-unknown-transfer-coding": (
        EMBED + b"Transfer-Encoding: foo\r\n\r\n0\r\n\r\n", 501, "",
    ),
}  # fmt: skip
"""Answered by gunicorn before the app sees the request."""


@pytest.mark.parametrize("case", list(GUNICORN_CASES))
def test_malformed_http_gets_our_json_error(live_api: str, case: str) -> None:
    data, expected, contains = GUNICORN_CASES[case]
    status, headers, body = exchange(live_api, data)
    assert status == expected, body[:300]
    assert contains in native_error(status, headers, body)


def test_a_bad_chunk_size_is_a_400_on_every_front(live_api: str) -> None:
    bad = b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    status, headers, body = exchange(live_api, EMBED + bad)
    assert status == 400
    assert "malformed chunked request body" in native_error(status, headers, body)
    ollama = EMBED.replace(b"/api/v1/embeddings", b"/api/embed")
    status, headers, body = exchange(live_api, ollama + bad)
    assert status == 400
    assert "malformed chunked request body" in orjson.loads(body)["error"]  # Ollama's shape


def test_a_chunked_body_past_the_limit_is_a_413_and_one_at_it_is_read(live_api: str) -> None:
    limit = load_settings().MAX_REQUEST_BYTES
    over = b'{"input": "' + b"a" * limit + b'"}'
    status, headers, body = exchange(
        live_api, EMBED + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(over)
    )
    assert status == 413, body[:300]
    native_error(status, headers, body)
    small = orjson.dumps({"input": ["sent in chunks", "of three bytes"]})
    status, headers, body = exchange(
        live_api, EMBED + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(small, 3)
    )
    assert status == 200, body[:300]
    assert len(orjson.loads(body)["data"]) == 2


def test_ollama_legacy_embeddings_refuses_a_list_prompt(live_api: str) -> None:
    """Ollama's /api/embeddings takes one prompt; a list must not quietly embed only one."""
    response = requests.post(
        f"{live_api}/api/embeddings", json={"model": MODEL, "prompt": ["a", "b"]}, timeout=30
    )
    assert response.status_code == 400
    assert "/api/embed" in response.json()["error"]
    one = requests.post(
        f"{live_api}/api/embeddings", json={"model": MODEL, "prompt": "a"}, timeout=30
    )
    assert one.status_code == 200
    assert len(one.json()["embedding"]) == 384
