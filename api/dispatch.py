"""From a validated request to a queued job, and from a finished job to a response body."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from api.services import Services
from common.jobs import Job, JobStatus
from common.queueing import EMBED_TASK, QueueName
from common.registry import ModelSpec, Provider
from common.schemas import EmbeddingRequest, EncodingFormat
from common.vectors import to_base64


def pick_queue(svc: Services, spec: ModelSpec) -> str:
    """Local models go to a GPU worker when one is enabled and online, else to the CPU."""
    if spec.provider is not Provider.LOCAL or spec.queue != "local":
        return spec.queue
    if svc.settings.GPU_ENABLED and any(
        QueueName.GPU in w.queues and w.device == "cuda" for w in svc.workers()
    ):
        return QueueName.GPU
    return QueueName.CPU


def submit(svc: Services, spec: ModelSpec, request: EmbeddingRequest) -> str:
    """Record the job, then send the task by name (the API never imports workers)."""
    queue = pick_queue(svc, spec)
    options = request.options.model_dump() | {"encoding_format": request.encoding_format}
    job_id = svc.jobs.create(spec.name, queue, len(request.texts), options)
    svc.celery.send_task(
        EMBED_TASK,
        args=[job_id, spec.name, request.texts, request.options.model_dump()],
        queue=queue,
    )
    return job_id


def embeddings_body(job: Job, matrix: np.ndarray, encoding_format: EncodingFormat) -> dict:
    rows: list[object] = (
        [to_base64(row) for row in matrix] if encoding_format == "base64" else list(matrix)
    )
    tokens = job.prompt_tokens or 0
    return {
        "model": job.model,
        "data": [{"index": i, "embedding": row} for i, row in enumerate(rows)],
        "dimensions": int(matrix.shape[1]),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def job_body(svc: Services, job: Job, status_url: str) -> dict:
    body: dict[str, object] = {
        "id": job.id,
        "status": job.status.value,
        "status_url": status_url,
        "model": job.model,
        "count": job.count,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }
    if job.status is JobStatus.SUCCEEDED:
        fmt = job.options.get("encoding_format", "float")
        body["result"] = embeddings_body(job, svc.jobs.vectors(job), fmt)  # type: ignore[arg-type]
    if job.error:
        body["error"] = job.error
    return body
