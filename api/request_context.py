"""Request ids and per-request log context.

Each request gets an id: the client's X-Request-ID when it is a sane token, else a new
one. It is bound to the log context (with the job id of /jobs/<job_id> routes), returned
in the X-Request-ID header of every answer, errors included, and sent to the workers as a
message header (common/logs.send_options) so their task logs carry it too. One JSON line
per request records method, route, status and duration (never bodies or headers).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from common import logs

HEADER = "X-Request-ID"
QUIET = frozenset(
    {"/livez", "/readyz", "/metrics", "/health", "/docs/init.js", "/docs/<path:asset>"}
)
"""Routes polled by machines: their request lines are logged at debug only."""

log = logging.getLogger("api.access")


def _begin() -> None:
    g.request_id = logs.request_id_from(request.headers.get(HEADER))
    g.request_started = time.perf_counter()
    job_id = (request.view_args or {}).get("job_id")
    logs.start(request_id=g.request_id, job_id=job_id)


def _finish(response: Response) -> Response:
    # Another before_request hook may have refused the request before ours ran.
    request_id = g.get("request_id") or logs.request_id_from(request.headers.get(HEADER))
    response.headers[HEADER] = request_id
    rule = request.url_rule.rule if request.url_rule is not None else None
    started = g.get("request_started")
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
    log.log(
        logging.DEBUG if rule in QUIET else logging.INFO,
        "%s %s %s",
        request.method,
        rule or "unmatched",
        response.status_code,
        extra={
            "method": request.method,
            "route": rule,
            "status": response.status_code,
            "duration_ms": duration_ms,
        },
    )
    return response


def _end(_: BaseException | None) -> None:
    logs.clear()


def init_app(app: Flask) -> None:
    """Register first, so every later hook and handler logs with the request id."""
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_end)
