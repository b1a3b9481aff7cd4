"""Celery tasks: thin, like views. The work happens in the batcher and the providers."""

from __future__ import annotations

import logging

from celery import Celery

from common.errors import ServiceError
from common.queueing import EMBED_TASK
from common.schemas import EmbedOptions
from common.vectors import normalize
from workers import runtime

log = logging.getLogger(__name__)


def embed(job_id: str, model: str, texts: list[str], options: dict[str, object]) -> None:
    """Embed one request's texts and store the vectors under the job.

    Idempotent: a message redelivered after a worker died finds the job running and
    redoes it; one for a job already finished or cancelled does nothing.
    """
    rt = runtime.current()
    if not rt.jobs.start(job_id):
        log.info("job %s is finished, cancelled or expired: skipped", job_id)
        return
    try:
        opts = EmbedOptions.model_validate(options)
        batcher = rt.batcher(rt.registry.get(model))
        tokens = batcher.encoder.count_tokens(texts)
        matrix = batcher.submit(texts, sum(tokens)).result()
        if opts.normalize:
            matrix = normalize(matrix)
    except ServiceError as error:
        rt.jobs.fail(job_id, error.type, error.message)
    except Exception as error:  # never let one job take the worker down
        log.exception("job %s failed", job_id)
        rt.jobs.fail(job_id, "internal_error", f"{type(error).__name__}: {error}")
    else:
        rt.jobs.succeed(job_id, matrix, sum(tokens))


def register(app: Celery) -> None:
    app.task(name=EMBED_TASK, ignore_result=True)(embed)
