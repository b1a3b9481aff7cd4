"""The bulk-indexing task: one batch of whole documents, stored exactly once."""

from __future__ import annotations

import logging

import redis
from celery import Celery

from common import ledger
from common.errors import ServiceError
from common.queueing import INDEX_BATCH_TASK
from common.schemas import IndexBatchTask
from common.vectors import pack
from workers import metrics, runtime
from workers.tasks import compute, requeue_on_storage_error

log = logging.getLogger(__name__)


def index_batch(payload: dict[str, object]) -> None:
    """Embed a batch through the same cache and batcher as every request, then store it.

    A redelivered batch (the worker died before the ack) is computed again and
    overwrites its own result; a batch of a cancelled or finished job is skipped. Redis
    away at any step fails nothing: the message is requeued.
    """
    task = IndexBatchTask.model_validate(payload)
    with requeue_on_storage_error(task.job_id):
        _index_batch(task)


def _index_batch(task: IndexBatchTask) -> None:
    rt = runtime.current()
    if task.ledger:
        ledger.started(rt.redis, task.ledger)
    jobs = rt.index_jobs
    status = jobs.begin(task.job_id)
    if status is None or status.terminal:
        log.info("index job %s is %s: batch %d skipped", task.job_id, status, task.batch)
        return
    try:
        matrix = compute(task)
    except redis.RedisError:  # the cache, not the batch, failed: requeued by index_batch()
        raise
    except Exception as error:  # a failed batch fails its documents, not the worker
        if not isinstance(error, ServiceError):
            log.exception("index job %s batch %d failed", task.job_id, task.batch)
        reason = error.message if isinstance(error, ServiceError) else type(error).__name__
        metrics.task_failed(
            task.model, error.type if isinstance(error, ServiceError) else "internal_error"
        )
        jobs.fail_batch(task.job_id, task.batch, reason)
        return
    jobs.store_batch(task.job_id, task.batch, pack(matrix), len(task.texts), task.docs)


def register(app: Celery) -> None:
    app.task(name=INDEX_BATCH_TASK, ignore_result=True)(index_batch)
