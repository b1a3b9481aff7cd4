"""JSON logs for the Celery worker, with each task's request id, job id and model.

Connecting `setup_logging` makes Celery leave logging to common/logs.py (JSON lines on
stderr, or readable ones with LOG_FORMAT=console; LOG_LEVEL and RUST_LOG). The API sends
a `request_id` header with every task (common/logs.send_options); `task_prerun` binds it,
with the job id and model from the payload, for every line the task logs, and
`task_postrun` clears it. Celery's own per-task lines show only at debug.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, signals

from common import logs
from common.settings import Settings
from workers.metrics import header

CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
_settings: Settings | None = None
_installed = False


def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    level = _settings.LOG_LEVEL if _settings else "info"
    # `--loglevel` may only make the worker more verbose than LOG_LEVEL.
    if isinstance(loglevel, int) and loglevel < logging.getLevelName(level.upper()):
        level = logging.getLevelName(loglevel).lower()
    rust_log, log_format = (_settings.RUST_LOG, _settings.LOG_FORMAT) if _settings else (None, None)
    # Each task's line is workers.metrics' (request id, job, model, outcome, seconds):
    # Celery's own "received" and "succeeded" lines repeat it with less.
    logs.configure(level, rust_log, "worker", log_format, repeats=CELERY_TASK_LOGGERS)


def _prerun(task_id: str, task: Task, args: Any = None, **_: Any) -> None:
    payload = args[0] if args and isinstance(args[0], dict) else {}
    logs.start(
        request_id=header(task, "request_id"),
        job_id=payload.get("job_id"),
        model=payload.get("model"),
        task_id=task_id,
    )


def _postrun(**_: Any) -> None:
    logs.clear()


def install(settings: Settings) -> None:
    """Connect the signals (once per process); call at import of the Celery app module."""
    global _settings, _installed
    _settings = settings
    if _installed:
        return
    signals.setup_logging.connect(_setup_logging, weak=False)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    _installed = True
