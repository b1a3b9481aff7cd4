"""The bulk-indexing tasks: one batch of whole documents, stored exactly once; and the
closing of a finished job's sink."""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np
import redis
from celery import Celery, current_app

from common.errors import JobNotFound, ServiceError
from common.index_jobs import Settled
from common.jobs import JobStatus
from common.queueing import INDEX_BATCH_TASK, INDEX_FINISH_TASK, send_index_finish
from common.schemas import IndexBatchTask, IndexFinishTask
from common.sinks import JobManifest, SinkBatch, SinkError
from common.vectors import pack
from workers import metrics, runtime
from workers.tasks import compute, requeue_on_storage_error, taken

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A newer attempt claimed the batch (this worker was given up for lost)."""


def index_batch(payload: dict[str, object]) -> None:
    """Embed a batch through the same cache and batcher as every request, then store it
    in its job's sink (or in Redis).

    A redelivered batch (its worker died or stopped before the ack) is computed again and
    overwrites its own result; a batch of a cancelled or finished job is skipped. Redis
    away at any step fails nothing: the message is requeued.
    """
    task = IndexBatchTask.model_validate(payload)
    with requeue_on_storage_error(task.job_id):
        _index_batch(task)


def _index_batch(task: IndexBatchTask) -> None:
    rt = runtime.current()
    with rt.redis.pipeline(transaction=False) as pipe:
        taken(pipe, task)
        pipe.execute()
    jobs = rt.index_jobs
    attempt, started = uuid.uuid4().hex, time.time()
    status = jobs.begin(task.job_id, task.batch, attempt)
    if status is not JobStatus.RUNNING:
        log.info("index job %s is %s: batch %d skipped", task.job_id, status, task.batch)
        return
    try:
        matrix = compute(task, bulk=True)
        if task.sink is None:
            value, drop_plan = pack(matrix), False
        else:
            _write(task, matrix, attempt, started)
            value, drop_plan = str(len(task.texts)).encode(), True
    except redis.RedisError:  # the cache, not the batch, failed: requeued by index_batch()
        raise
    except Superseded:
        settled = Settled("stale", False)
    except Exception as error:  # a failed batch fails its documents, not the worker
        if not isinstance(error, ServiceError):
            log.exception("index job %s batch %d failed", task.job_id, task.batch)
        reason = error.message if isinstance(error, ServiceError) else type(error).__name__
        metrics.task_failed(
            task.model, error.type if isinstance(error, ServiceError) else "internal_error"
        )
        settled = jobs.fail_batch(task.job_id, task.batch, reason, attempt)
    else:
        settled = jobs.store_batch(task.job_id, task.batch, value, len(task.texts), task.docs,
                                   attempt, drop_plan)  # fmt: skip
    if settled.status == "stale":
        log.warning("index job %s batch %d: a newer attempt holds it; this late one is dropped",
                    task.job_id, task.batch)  # fmt: skip
    elif settled.finished_now and task.sink is not None:
        send_index_finish(current_app, task.job_id, jobs.get(task.job_id).queue)


def _write(task: IndexBatchTask, matrix: np.ndarray, attempt: str, started: float) -> None:
    """Write the batch to its sink, retrying with backoff while the sink fails (the job
    shows the error meanwhile); SinkError once the retries are spent."""
    rt = runtime.current()
    assert task.sink is not None and task.rows is not None
    batch = SinkBatch(
        job_id=task.job_id, batch=task.batch, model=task.model, rows=task.rows,
        metadata=task.metadata or {}, vectors=matrix.astype(np.float32, copy=False),
        written_at=started,
    )  # fmt: skip
    retries = rt.settings.SINK_MAX_RETRIES
    for attempt_number in range(retries + 1):
        if not rt.index_jobs.holds_claim(task.job_id, task.batch, attempt):
            raise Superseded
        try:
            rt.sink(task.sink).write(batch)
        except SinkError as error:
            if attempt_number == retries or not error.retryable:
                raise
            wait = rt.settings.SINK_RETRY_BACKOFF_SECONDS * 2**attempt_number
            rt.index_jobs.note_sink_error(task.job_id, f"{error.message} (retrying)")
            log.warning("index job %s batch %d: %s; retry in %gs", task.job_id, task.batch,
                        error.message, wait)  # fmt: skip
            time.sleep(wait)
        else:
            if attempt_number:
                rt.index_jobs.note_sink_error(task.job_id, None)
            return


def index_finish(payload: dict[str, object]) -> None:
    """Close a finished job's sink: the manifest, the vector index. Idempotent."""
    task = IndexFinishTask.model_validate(payload)
    rt = runtime.current()
    try:
        job = rt.index_jobs.get(task.job_id)
    except JobNotFound:  # expired meanwhile
        return
    if job.sink is None or not job.status.terminal:
        return
    try:
        rt.sink(job.sink).finish(JobManifest.from_index_job(job))
    except SinkError as error:
        log.error("index job %s: closing sink %s failed: %s", job.id, job.sink, error.message)
    else:
        log.info("index job %s: sink %s closed", job.id, job.sink)


def register(app: Celery) -> None:
    app.task(name=INDEX_BATCH_TASK)(index_batch)
    app.task(name=INDEX_FINISH_TASK)(index_finish)
