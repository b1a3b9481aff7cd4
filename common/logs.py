"""Structured logs: one JSON object per line, for the API, gunicorn and the Celery workers;
or, with LOG_FORMAT=console (the default when stderr is a terminal), the same fields as
one readable line.

Every line has timestamp, level, event, logger, service, request_id, job_id and model
(null when unknown). The ids come from a context variable: the API binds them per
request (api/request_context.py), a worker per task (workers/task_context.py) from the
`request_id` header that the API puts on every message it sends (`send_options`).

Levels: LOG_LEVEL, and the deployment guide's RUST_LOG as a switch that can only make
logging more verbose: `RUST_LOG=debug` (everything), `RUST_LOG=embeddings=debug` (this
service's own loggers only), `RUST_LOG=celery=debug,kombu=info` (any logger by name).

Input texts, cache keys and API keys are never logged at info or above by this code;
`send_options` also keeps them out of Celery's own logs and Flower (argsrepr).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

FIELDS = ("request_id", "job_id", "model")
"""Context fields present in every line (null when not bound)."""

OWN_LOGGERS = ("api", "common", "workers", "cli")
"""This service's loggers: what RUST_LOG's `embeddings=LEVEL` target sets."""

OWN_TARGETS = {"embeddings", "embeddings_service", "embeddings-service"}

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("embeddings_log_context", default=_EMPTY)


# ---------------------------------------------------------------------------- context


def bind(**fields: object) -> None:
    """Add fields to the current request's or task's context (None values are skipped)."""
    new = {k: str(v) for k, v in fields.items() if v is not None}
    if new:
        _context.set({**_context.get(), **new})


def start(**fields: object) -> None:
    """Begin a fresh context (a new request or task): nothing from the last one carries over."""
    _context.set({k: str(v) for k, v in fields.items() if v is not None})


def clear() -> None:
    _context.set(_EMPTY)


def context() -> Mapping[str, str]:
    return _context.get()


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a new random one.

    Refusing odd values keeps control characters and huge strings out of the logs.
    """
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def send_options(summary: str) -> dict[str, object]:
    """Options for `celery.send_task` on behalf of the current request.

    headers: the request id (the worker logs it with every line of the task) and the
    time the message was sent (the worker's queued-time metric). argsrepr: a summary
    shown by Celery's logs and Flower instead of the arguments, which hold the texts.
    """
    return {
        "headers": {"request_id": _context.get().get("request_id"), "enqueued_at": time.time()},
        "argsrepr": summary,
        "kwargsrepr": "{}",
    }


# ---------------------------------------------------------------------------- levels


def parse_rust_log(value: str | None) -> tuple[int | None, dict[str, int]]:
    """RUST_LOG directives -> (global level or None, {logger name: level}).

    Unknown levels are ignored rather than fatal: a stray value must not stop a service.
    """
    default: int | None = None
    targets: dict[str, int] = {}
    for directive in (value or "").split(","):
        directive = directive.strip()
        if not directive:
            continue
        target, _, level = directive.rpartition("=")
        number = _LEVELS.get(level.strip().lower())
        if number is None:
            continue
        target = target.strip()
        if not target:
            default = number
        elif target in OWN_TARGETS:
            targets.update(dict.fromkeys(OWN_LOGGERS, number))
        else:
            targets[target.replace("::", ".")] = number
    return default, targets


def levels(log_level: str, rust_log: str | None = None) -> tuple[int, dict[str, int]]:
    """The root level and per-logger levels from LOG_LEVEL and RUST_LOG.

    RUST_LOG only ever turns logging up: the more verbose of the two wins.
    """
    root = _LEVELS.get(log_level.lower(), logging.INFO)
    default, targets = parse_rust_log(rust_log)
    if default is not None:
        root = min(root, default)
    return root, {name: min(level, root) for name, level in targets.items()}


# ---------------------------------------------------------------------------- output


class JsonLineFormatter(OrjsonFormatter):
    """timestamp, level, event, logger, service, the context fields, then any extras."""

    def __init__(self, service: str = "embeddings") -> None:
        super().__init__("%(message)s")
        self.service = service

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        bound = _context.get()
        log_data["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        log_data["level"] = record.levelname.lower()
        log_data["event"] = record.message
        log_data["logger"] = record.name
        log_data["service"] = self.service
        for name in FIELDS:
            log_data[name] = bound.get(name)
        for name, value in bound.items():
            log_data.setdefault(name, value)
        for name, value in record.__dict__.items():
            if name in self._skip_fields or name == "taskName" or name.startswith("_"):
                continue
            if name == "data" and isinstance(value, dict) and record.name.startswith("celery"):
                # Celery's trace lines carry the task's args repr in `data`: never log it.
                value = {k: v for k, v in value.items() if k not in ("args", "kwargs")}
            log_data[name] = value
        log_data.update(message_dict)


class ConsoleLineFormatter(JsonLineFormatter):
    """The JSON lines' fields as one readable line, for a person at a terminal:
    `14:03:07.412 api    INFO     api.access: POST /api/v1/embeddings 200  model=m`
    (local time; null fields left out), then a traceback, if any, on the lines after."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["timestamp"] = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        data = dict(log_data)
        head = (
            f"{data.pop('timestamp')} {data.pop('service'):<6} {data.pop('level').upper():<8} "
            f"{data.pop('logger')}: {data.pop('event')}"
        )
        tails = [str(data.pop(name)) for name in ("exc_info", "stack_info") if data.get(name)]
        pairs = [f"{k}={_shown(v)}" for k, v in data.items() if v is not None]
        return "\n".join([f"{head}  {' '.join(pairs)}" if pairs else head, *tails])


def _shown(value: object) -> str:
    """A value of a key=value pair: bare if it is a plain word, else as JSON."""
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return orjson.dumps(value, default=str).decode()


FORMATS: dict[str, type[JsonLineFormatter]] = {
    "json": JsonLineFormatter,
    "console": ConsoleLineFormatter,
}


def resolve_format(log_format: str | None, stream: Any = None) -> str:
    """LOG_FORMAT, or when unset: console if the stream (stderr) is a terminal, else json
    (containers, files, pipes)."""
    if log_format:
        return log_format
    isatty = getattr(stream or sys.stderr, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


class LinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our handler on the root logger; configure() replaces it instead of adding another."""


def line_handler(
    service: str = "embeddings", stream: Any = None, log_format: str | None = "json"
) -> logging.Handler:
    """Our handler: JSON lines, or with log_format `console` (or None on a terminal),
    readable ones."""
    handler = LinesHandler(stream or sys.stderr)
    handler.setFormatter(FORMATS[resolve_format(log_format, handler.stream)](service))
    return handler


def _repeat_level(root_level: int) -> int:
    """The level of a logger whose lines repeat ours with less in them (gunicorn's access
    line, Celery's per-task lines): shown at debug only, unless RUST_LOG names it."""
    return root_level if root_level <= logging.DEBUG else logging.WARNING


def configure(
    log_level: str = "info",
    rust_log: str | None = None,
    service: str = "api",
    log_format: str | None = "json",
    repeats: tuple[str, ...] = (),
) -> None:
    """Send every log record of this process to stderr as lines of `log_format`
    (LOG_FORMAT; None: resolve_format decides) (idempotent). `repeats`: loggers whose
    lines repeat ours (_repeat_level)."""
    root_level, targets = levels(log_level, rust_log)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LinesHandler):
            root.removeHandler(handler)
    root.addHandler(line_handler(service, log_format=log_format))
    root.setLevel(root_level)
    for name in repeats:
        logging.getLogger(name).setLevel(_repeat_level(root_level))
    for name, level in targets.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)


def gunicorn_config(
    log_level: str, rust_log: str | None = None, log_format: str | None = "json"
) -> dict[str, object]:
    """A dictConfig for gunicorn's `logconfig_dict`: its own loggers as our lines too."""
    root_level, targets = levels(log_level, rust_log)
    name = logging.getLevelName(root_level)
    access = logging.getLevelName(_repeat_level(root_level))
    handler = {"()": "common.logs.line_handler", "service": "api", "log_format": log_format}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": name, "handlers": ["lines"]},
        "loggers": {
            "gunicorn.error": {"level": name, "handlers": [], "propagate": True},
            # Each request's line is api.access's (request id, route, model): gunicorn's
            # own access line only at debug.
            "gunicorn.access": {"level": access, "handlers": [], "propagate": True},
            **{logger: {"level": logging.getLevelName(level)} for logger, level in targets.items()},
        },
        "handlers": {"lines": handler},
        "formatters": {},
    }
