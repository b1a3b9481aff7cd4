"""The API's gunicorn worker: gunicorn's gevent worker, with every answer in our JSON shape.

gevent gives each connection a greenlet, not one of a few threads, so clients that send
slowly, or nothing, cost a socket each and starve no one (tests/test_slow_clients.py).
They are cut off too: request headers must arrive within `keepalive` seconds (gunicorn's
gevent worker), and a body within REQUEST_BODY_TIMEOUT_SECONDS plus a second for every
REQUEST_BODY_MIN_RATE bytes received (the rule of Apache's mod_reqtimeout); a late body
is answered 408. Malformed HTTP, which gunicorn answers before the app sees it, gets our
JSON error instead of gunicorn's HTML page.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import gevent
import orjson
from gevent.monkey import MonkeyPatchWarning
from gunicorn import util
from gunicorn.http import errors as http
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import BadRequest, HTTPException, RequestTimeout, default_exceptions

from api.errors import http_type
from common.settings import get_settings

# gunicorn imports ssl before its worker patches it; gevent names what holds the unpatched
# one. Only redis.asyncio does, and the API never uses it: that warning alone is silenced.
warnings.filterwarnings(
    "ignore",
    r"Monkey-patching ssl .*\['redis\.asyncio\.connection [^]]*\]\. *$",
    MonkeyPatchWarning,
)

STATUS: tuple[tuple[type[Exception], int], ...] = (
    (http.InvalidResponseHeader, 500),  # the app's fault, not the client's
    (http.InvalidResponseHeaderName, 500),
    (http.ConfigurationProblem, 500),
    (http.LimitRequestLine, 414),
    (http.LimitRequestHeaders, 431),
    (http.UnsupportedTransferCoding, 501),
    (http.ExpectationFailed, 417),
    (http.ForbiddenProxyRequest, 403),
    (http.ParseException, 400),
)
"""gunicorn's parse errors -> status, as gunicorn answers them; the first match wins."""


def error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP response: our error body, and the connection closed after it."""
    error = default_exceptions[status]()
    body = orjson.dumps({"error": {"type": http_type(error), "message": message, "param": None}})
    head = (
        f"HTTP/1.1 {status} {error.name}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class PacedBody:
    """A request body that must keep pace: all of it within `timeout` seconds, plus one more
    second for each `min_rate` bytes received, or 408. A malformed chunked body: 400."""

    def __init__(self, body: Any, timeout: float, min_rate: int) -> None:
        self._body = body
        self._deadline = time.monotonic() + timeout
        self._min_rate = min_rate
        self.answered = False
        """Set once the app has answered: gunicorn then only drains what it left."""

    def _paced(self, read: Callable[..., bytes], size: int | None) -> bytes:
        # A read that need not wait never yields to the hub, so the timer never fires.
        late = self._answer(RequestTimeout("the request body came too slowly"))
        try:
            with gevent.Timeout(max(0.0, self._deadline - time.monotonic()), late):
                data = read(size)
        except http.ParseException as error:  # a malformed chunked body
            raise self._answer(BadRequest(f"malformed chunked request body: {error}")) from None
        self._deadline += len(data) / self._min_rate
        return data

    def _answer(self, error: HTTPException) -> Exception:
        """`error` for the app to answer; once it has, gunicorn closes the connection."""
        return http.NoMoreData() if self.answered else error

    def read(self, size: int | None = None) -> bytes:
        return self._paced(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._paced(self._body.readline, size)

    def readlines(self, size: int | None = None) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class ApiWorker(GeventWorker):
    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        settings = get_settings()
        body = req.body = PacedBody(
            req.body, settings.REQUEST_BODY_TIMEOUT_SECONDS, settings.REQUEST_BODY_MIN_RATE
        )
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            body.answered = True

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's handle_error, answering our JSON error instead of an HTML page."""
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
        if status == 500:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
            message = "internal server error"
        else:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
            message = str(exc)
        try:
            util.write_nonblock(client, error_bytes(status, message))
        except Exception:
            self.log.debug("Failed to send error message.")
