"""Celery tasks: thin, like views. The work happens in the batcher and the providers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import redis
from celery import Celery
from celery.exceptions import Reject

from common import dimensions, ledger, storage
from common.errors import DeadlineExceeded, ServiceError
from common.queueing import EMBED_TASK
from common.schemas import EmbedTask, IndexBatchTask
from common.vectors import normalize, unpack_row
from workers import metrics, runtime

log = logging.getLogger(__name__)


STORAGE_RETRY_SECONDS = 5.0


@contextmanager
def requeue_on_storage_error(job_id: str) -> Iterator[None]:
    """Results that cannot be stored (Redis down, or full under noeviction) are not lost:
    the message goes back to the queue, after a pause, and the work is done again later."""
    try:
        yield
    except redis.RedisError as error:
        log.warning("job %s: storing its result failed (%s); requeued", job_id, error)
        time.sleep(STORAGE_RETRY_SECONDS)
        raise Reject(str(error), requeue=True) from error


def compute(task: EmbedTask, bulk: bool = False) -> np.ndarray:
    """The job's vectors: cached rows from Redis, the rest from the model (then cached).
    `bulk`: index work, which a local model's batcher serves after interactive work."""
    rt = runtime.current()
    spec = rt.registry.get(task.model)
    wanted = task.options.dimensions
    spec = dimensions.as_asked(spec, wanted)
    keys = task.cache_keys
    cached = rt.cache.get_many(keys) if keys and task.cache_read else [None] * len(task.texts)
    misses = [i for i, value in enumerate(cached) if value is None]
    rows: list[np.ndarray | None] = [
        None if value is None else unpack_row(value) for value in cached
    ]
    if misses:
        texts, tokens = [task.texts[i] for i in misses], [task.tokens[i] for i in misses]
        computed = rt.embedder(spec).embed(texts, tokens, task.options.truncate, bulk)
        computed = dimensions.cut(computed, wanted)
        if task.options.normalize:
            computed = normalize(computed)
        for i, row in zip(misses, computed, strict=True):
            rows[i] = row
        if keys:
            rt.cache.put_many([keys[i] for i in misses], computed, task.cache_ttl_seconds)
    return np.stack(rows)  # type: ignore[arg-type]


def embed(payload: dict[str, object]) -> None:
    """Embed one job's texts and store the vectors under the job.

    Idempotent: a message redelivered after a worker died finds the job running and
    redoes it; one for a job already finished or cancelled does nothing. Redis away at
    any step (job state, cache) fails nothing: the message is requeued.
    """
    task = EmbedTask.model_validate(payload)
    with requeue_on_storage_error(task.job_id):
        _embed(task)


def taken(client: redis.Redis, task: EmbedTask | IndexBatchTask) -> None:
    """A task has started: its message is unacked now, so its ledger note goes, and its
    texts no longer wait, so the bytes they held go."""
    if task.ledger:
        ledger.started(client, task.ledger)
    storage.started(client, task.holds)


def _embed(task: EmbedTask) -> None:
    rt = runtime.current()
    if task.deadline is not None and time.time() > task.deadline:
        rt.jobs.fail(task.job_id, DeadlineExceeded.type, "the client's deadline passed first",
                     before=lambda pipe: taken(pipe, task))  # fmt: skip
        log.info("job %s dropped: its deadline passed while queued", task.job_id)
        return
    if not rt.jobs.start(task.job_id, before=lambda pipe: taken(pipe, task)):
        log.info("job %s is finished, cancelled or expired: skipped", task.job_id)
        return
    try:
        matrix = compute(task)
    except ServiceError as error:
        metrics.task_failed(task.model, error.type)
        rt.jobs.fail(task.job_id, error.type, error.message)
    except redis.RedisError:  # the cache, not the job, failed: requeued by embed()
        raise
    except Exception as error:  # never let one job take the worker down
        log.exception("job %s failed", task.job_id)
        metrics.task_failed(task.model, "internal_error")
        rt.jobs.fail(task.job_id, "internal_error", f"{type(error).__name__}: {error}")
    else:
        rt.jobs.succeed(task.job_id, matrix)


def register(app: Celery) -> None:
    app.task(name=EMBED_TASK)(embed)
