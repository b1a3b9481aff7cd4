"""Celery configuration shared by the API (which sends tasks by name) and the workers."""

from __future__ import annotations

from enum import StrEnum

from celery import Celery
from kombu import Queue

from common import broker
from common.redis_client import tls_options
from common.settings import Settings


class QueueName(StrEnum):
    GPU = "gpu"
    CPU = "cpu"
    REMOTE = "remote"


EMBED_TASK = "embeddings.embed"
"""Task name the API sends; workers/tasks.py registers the task under it."""

INDEX_BATCH_TASK = "embeddings.index_batch"
"""One batch of a bulk index job; workers/indexing.py registers it."""

INDEX_FINISH_TASK = "embeddings.index_finish"
"""Closes a finished index job's sink (manifest, vector index); workers/indexing.py."""

BULK_SUFFIX = "-bulk"


def bulk_lane(queue: str) -> str:
    """The queue of a queue's bulk work (index batches): `cpu` -> `cpu-bulk`. A worker
    consumes the bulk lane of every queue it is given, apart from its Celery pool
    (workers/bulk_lane.py)."""
    return queue if is_bulk_lane(queue) else queue + BULK_SUFFIX


def is_bulk_lane(queue: str) -> bool:
    return queue.endswith(BULK_SUFFIX)


ALL_QUEUES: tuple[str, ...] = (*(q.value for q in QueueName), *(bulk_lane(q) for q in QueueName))
"""Every queue, interactive lanes first: health, metrics and the broker's declarations."""


def celery_config(settings: Settings) -> dict[str, object]:
    return {
        "broker_url": settings.REDIS_URL,
        # TLS for a rediss:// URL: kombu's connections, and Flower's broker page, take it.
        "broker_use_ssl": tls_options(settings) or None,
        "broker_connection_retry_on_startup": True,
        # Visibility timeout: a message taken by a worker that died unacked is redelivered
        # after this long. It must exceed the longest task.
        "broker_transport_options": {
            "visibility_timeout": settings.BROKER_VISIBILITY_TIMEOUT_SECONDS,
            # Look for such messages every few seconds (kombu's default is ~100 s).
            "unacked_restore_interval": min(
                10, max(1, settings.BROKER_VISIBILITY_TIMEOUT_SECONDS // 3)
            ),
            "unacked_restore_throttle": 1,
        },
        "task_queues": [Queue(q) for q in ALL_QUEUES],
        "task_default_queue": QueueName.CPU.value,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Vectors go to Redis under job keys, never through Celery results.
        "task_ignore_result": True,
        "result_backend": None,
        # Long tasks: ack after the work is stored, requeue if the worker dies, and reserve
        # only one message per pool slot so no task waits behind a slow one.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Events for Flower.
        "worker_send_task_events": True,
        # No task-sent event: a PUBLISH per task in the API, for a state Flower does not need
        # (the workers report received, started and done).
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings, main: str = "embeddings") -> Celery:
    broker.install()
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


def send_index_finish(app: Celery, job_id: str, queue: str) -> None:
    """Queue the closing of a finished sink job (its manifest, its vector index) on the
    job's bulk lane; sent by whichever side saw the job end."""
    app.send_task(INDEX_FINISH_TASK, args=[{"job_id": job_id}], queue=bulk_lane(queue))
