"""The Celery app the `celery -A workers.celery_app worker` command points at.

Run local models in a threads pool: it never forks (safe after CUDA starts) and lets
concurrent tasks feed one batcher per model. Example:

    celery -A workers.celery_app worker -Q cpu --pool threads --concurrency 16
"""

from __future__ import annotations

import logging
import sys
import threading

from celery import signals
from celery.worker import WorkController

from common import presence
from common.queueing import bulk_lane, make_celery
from common.settings import SettingsError, get_settings
from workers import background, indexing, metrics, runtime, task_logs, tasks
from workers.bulk_lane import BulkLane
from workers.event_pacing import EventPacing
from workers.private_request import PrivateRequest

log = logging.getLogger(__name__)

try:
    settings = get_settings()
except SettingsError as error:
    sys.exit(f"embeddings worker: {error}")

# Metrics first: its task_postrun line still has the log context task_logs then clears.
metrics.install()
task_logs.install(settings)
app = make_celery(settings)
app.Task.Request = PrivateRequest  # every task's inspect replies: its summary, not its texts
tasks.register(app)
indexing.register(app)
app.steps["consumer"].update([BulkLane, EventPacing])
_stop_threads = threading.Event()


@signals.celeryd_after_setup.connect
def _start_runtime(sender: str, instance: WorkController, **_: object) -> None:
    consumed = list(instance.app.amqp.queues.consume_from)
    # Each queue's bulk lane too, by a consumer of its own (workers/bulk_lane.py).
    queues = list(dict.fromkeys([*consumed, *(bulk_lane(q) for q in consumed)]))
    if {"cpu", "gpu"} & set(queues) and instance.pool_cls.__module__.endswith("prefork"):
        # A forked child must never inherit CUDA, and each child would load its own model.
        sys.exit("embeddings worker: local-model queues need --pool threads (or solo)")
    try:
        rt = runtime.start(settings, queues, name=sender)
    except SettingsError as error:
        sys.exit(f"embeddings worker: {error}")
    rt.load_models()
    try:
        metrics.serve(settings, rt.registry, rt.name, rt.queues, rt.device)
    except OSError as error:
        sys.exit(f"embeddings worker: WORKER_METRICS_PORT={settings.WORKER_METRICS_PORT}: {error}")
    background.start(rt, _stop_threads)


@signals.worker_shutdown.connect
def _stop_runtime(**_: object) -> None:
    _stop_threads.set()
    try:
        rt = runtime.current()
        presence.forget(rt.redis, rt.name)
        for sink in rt.sinks.values():
            sink.close()
    except Exception as error:  # shutting down anyway
        log.debug("could not deregister: %s", error)
