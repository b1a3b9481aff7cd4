"""Every error becomes a JSON body {"error": {"type", "message", "param"}}; one table of codes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import redis
from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from common import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServiceError], int] = {
    errors.PayloadTooLarge: 413,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.TooManyRequests: 429,
    errors.InvalidRequest: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InsufficientStorage: 507,
    errors.Unavailable: 503,
    errors.Timeout: 504,
    errors.UpstreamTimeout: 504,
    errors.ProviderUnavailable: 503,
    errors.ProviderError: 502,
    errors.ServiceError: 500,
}
"""Most specific class first; the first match wins."""


def _class_status(cls: type[errors.ServiceError]) -> int:
    return next(code for kind, code in STATUS.items() if issubclass(cls, kind))


def _error_classes(cls: type[errors.ServiceError]) -> Iterator[type[errors.ServiceError]]:
    """The class and its subclasses, each parent before its children."""
    yield cls
    for sub in cls.__subclasses__():
        yield from _error_classes(sub)


def job_status(kind: str) -> int:
    """A failed job's status: that of the error class whose type the worker stored (where
    classes share a type, the parent's); an unknown type is a 500."""
    cls = next((c for c in _error_classes(errors.ServiceError) if c.type == kind), None)
    return 500 if cls is None else _class_status(cls)


def status_of(error: errors.ServiceError) -> int:
    if isinstance(error, errors.JobFailed):
        return job_status(error.kind)
    return _class_status(type(error))


def type_of(error: errors.ServiceError) -> str:
    """Our type of an error (a failed job's: the one the worker stored)."""
    return error.kind if isinstance(error, errors.JobFailed) else error.type


def http_type(error: HTTPException) -> str:
    """An HTTP error's type: `Method Not Allowed` -> method_not_allowed."""
    return (error.name or "error").lower().replace(" ", "_")


def note_type(kind: str) -> None:
    """Keep the answer's error type where api/metrics.py counts it (flask.g), whatever
    shape the front gives its body."""
    g.error_type = kind


def error_response(
    status: int, payload: dict[str, object], headers: dict | None = None, kind: str | None = None
) -> Response:
    """Our JSON error body; `kind`: the error type to count, if not the payload's."""
    note_type(kind or str(payload["type"]))
    return Response(
        orjson.dumps({"error": payload}), status=status, headers=headers,
        mimetype="application/json",
    )  # fmt: skip


def _service_error(error: errors.ServiceError) -> Response:
    payload: dict[str, object] = dict(error.to_dict())
    if isinstance(error, errors.Timeout):
        payload |= {"job_id": error.job_id, "status_url": f"/api/v1/jobs/{error.job_id}"}
    headers = dict(error.headers or {})
    if isinstance(error, errors.ProviderError):
        payload["provider"] = error.provider
        if error.retry_after:
            headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return error_response(status_of(error), payload, headers)


def _http_error(error: HTTPException) -> Response:
    response = error_response(
        error.code or 500, {"type": http_type(error), "message": error.description, "param": None}
    )
    if error.code == 405 and error.response is None:
        response.headers["Allow"] = ", ".join(getattr(error, "valid_methods", None) or [])
    return response


def _redis_down(error: redis.RedisError) -> Response:
    log.warning("redis unavailable: %s", error)
    return error_response(
        503,
        {"type": "service_unavailable", "message": "storage (Redis) is unavailable", "param": None},
        headers={"Retry-After": "5"},
    )


def _redis_full(error: redis.exceptions.OutOfMemoryError) -> Response:
    """Redis at maxmemory (noeviction) refuses writes: 507, as the fill check would."""
    log.warning("redis is full: %s", error)
    return _service_error(errors.InsufficientStorage(
        "Redis is full (its maxmemory): let finished jobs' results expire (JOB_TTL_SECONDS), "
        "or give Redis more memory"
    ))  # fmt: skip


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(
        500, {"type": "internal_error", "message": "internal server error", "param": None}
    )


def register(app: Flask) -> None:
    app.register_error_handler(errors.ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.ConnectionError, _redis_down)
    app.register_error_handler(redis.TimeoutError, _redis_down)
    app.register_error_handler(redis.exceptions.OutOfMemoryError, _redis_full)
    app.register_error_handler(Exception, _unexpected)
