"""Gunicorn settings from the service's settings; a bad setting stops start-up in one line."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.glogging import Logger

from api import multiproc
from common import logs
from common.registry import load_registry
from common.settings import SettingsError, get_settings

try:
    _settings = get_settings()
    load_registry(_settings)
except SettingsError as _error:
    sys.exit(f"embeddings api: {_error}")

# Before the app (and so prometheus_client) is imported: the workers' metric files go here.
_metrics_dir = multiproc.ensure_dir()

bind = f"{_settings.HOST}:{_settings.PORT}"
workers = _settings.WEB_CONCURRENCY
# Sync requests wait on Redis, not the CPU, and clients may send slowly or not at all: a
# greenlet per connection (gevent), not a thread, so neither starves anyone. Beyond its
# share of MAX_CONCURRENT_REQUESTS a process answers 429 (api/auth.py). The worker answers
# malformed HTTP with our JSON errors and cuts off slow bodies (api/http_worker.py); request
# headers must arrive within `keepalive` seconds.
worker_class = "api.http_worker.ApiWorker"
worker_connections = 1000
timeout = int(_settings.REQUEST_TIMEOUT_SECONDS) + 30
graceful_timeout = 30
keepalive = 5
# gunicorn 27's control socket defaults to one path per user, shared by every gunicorn on
# the host and unwritable under a read-only root: this service does not use it.
control_socket_disable = True
loglevel = _settings.LOG_LEVEL
accesslog = "-" if _settings.LOG_LEVEL == "debug" else None
# gunicorn's own lines like the app's (common/logs.py): JSON, or readable on a terminal.
logconfig_dict = logs.gunicorn_config(_settings.LOG_LEVEL, _settings.RUST_LOG, _settings.LOG_FORMAT)


class QuietAccessLogger(Logger):
    """gunicorn's logger, minus its access line where gunicorn.access would drop it: with
    logconfig_dict set, gunicorn formats that line on every request (3% of a cache hit)
    before the logger's level throws it away. api.access logs each request instead."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


logger_class = QuietAccessLogger


def on_starting(server: Any) -> None:
    multiproc.wipe(_metrics_dir)


def child_exit(server: Any, worker: Any) -> None:
    multiproc.mark_dead(worker.pid)


def on_exit(server: Any) -> None:
    multiproc.remove_if_created(_metrics_dir)
