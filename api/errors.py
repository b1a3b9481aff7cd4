"""Every error becomes a JSON body {"error": {"type", "message", "param"}}; one table of codes."""

from __future__ import annotations

import logging

import orjson
import redis
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from common import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServiceError], int] = {
    errors.PayloadTooLarge: 413,
    errors.Unauthorized: 401,
    errors.TooManyRequests: 429,
    errors.InvalidRequest: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InsufficientStorage: 507,
    errors.Unavailable: 503,
    errors.Timeout: 504,
    errors.UpstreamTimeout: 504,
    errors.ProviderUnavailable: 503,
    errors.UpstreamError: 502,
    errors.ServiceError: 500,
}
"""Most specific class first; the first match wins."""

JOB_ERROR_STATUS: dict[str, int] = {
    errors.InvalidRequest.type: 400,
    errors.ModelNotFound.type: 404,
    errors.Unavailable.type: 503,
    errors.UpstreamError.type: 502,
    errors.ProviderUnavailable.type: 503,
    errors.UpstreamTimeout.type: 504,
}
"""A failed job's error type, as stored by the worker -> the sync call's status."""


def status_of(error: errors.ServiceError) -> int:
    if isinstance(error, errors.JobFailed):
        return JOB_ERROR_STATUS.get(error.kind, 500)
    return next(code for cls, code in STATUS.items() if isinstance(error, cls))


def error_response(
    status: int, payload: dict[str, object], headers: dict | None = None
) -> Response:
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
    kind = (error.name or "error").lower().replace(" ", "_")
    response = error_response(
        error.code or 500, {"type": kind, "message": error.description, "param": None}
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
    app.register_error_handler(Exception, _unexpected)
