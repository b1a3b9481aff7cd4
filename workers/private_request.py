"""What a worker tells Celery's inspect commands about a task: its summary, never its texts.

Flower's worker pages ask each worker for its active, reserved and scheduled tasks
(`celery inspect active` and friends), and Celery answers with each task's arguments,
which hold the texts being embedded. The API gives every task a summary (`argsrepr`, see
common/logs.send_options) that the task events already carry; with this request class the
inspect replies carry it too.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request


class PrivateRequest(Request):  # type: ignore[misc]
    def info(self, safe: bool = False) -> dict[str, Any]:
        return super().info(safe=True)
