"""Gunicorn settings from the service's settings; a bad setting stops start-up in one line."""

from __future__ import annotations

import os
import sys

from common.registry import load_registry
from common.settings import SettingsError, get_settings

try:
    _settings = get_settings()
    load_registry(_settings)
except SettingsError as _error:
    sys.exit(f"embeddings api: {_error}")

bind = f"{_settings.HOST}:{_settings.PORT}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Sync requests wait on Redis, not the CPU: threads let one process hold many of them.
worker_class = "gthread"
threads = max(4, _settings.MAX_CONCURRENT_REQUESTS // workers)
timeout = int(_settings.REQUEST_TIMEOUT_SECONDS) + 30
graceful_timeout = 30
keepalive = 5
loglevel = _settings.LOG_LEVEL
accesslog = "-" if _settings.LOG_LEVEL == "debug" else None
