"""OpenAI's batch object: a batch's record, with the status and counts of its index job.

Nothing is written on a read: a batch's status, times and result files follow from its
job's, and its output and error files are read from the job (api/fronts/batch_output.py).
"""

from __future__ import annotations

import time

from api.fronts.batch_store import BatchRecord
from api.services import Services
from common import errors
from common.index_jobs import IndexJob
from common.jobs import JobStatus

ENDPOINT = "/v1/embeddings"


def job_of(svc: Services, batch: BatchRecord) -> IndexJob | None:
    """The batch's index job; None before it starts, or once it has expired."""
    if batch.job_id is None:
        return None
    try:
        return svc.index_jobs.get(batch.job_id)
    except errors.JobNotFound:
        return None


def status(batch: BatchRecord, job: IndexJob | None) -> str:
    if batch.errors is not None:
        return "failed"
    if batch.job_id is None:
        return "validating"
    if job is None:
        return "expired"
    if job.status is JobStatus.CANCELLED:
        return "cancelled"
    if job.status.terminal:
        return "completed"
    return "cancelling" if job.status is JobStatus.CANCELLING else "in_progress"


def result_ids(batch: BatchRecord, job: IndexJob | None) -> tuple[str | None, str | None]:
    """The output and error files, once the job has ended with lines for them."""
    if job is None or not job.status.terminal:
        return None, None
    return (batch.output_file_id if job.counts["docs_done"] else None,
            batch.error_file_id if job.counts["docs_failed"] else None)  # fmt: skip


def _object(batch: BatchRecord, job: IndexJob | None) -> dict[str, object]:
    state = status(batch, job)
    ended = int(job.finished_at) if job and job.status.terminal and job.finished_at else None
    output_file_id, error_file_id = result_ids(batch, job)
    counts = job.counts if job else {}
    return {
        "id": batch.id, "object": "batch", "endpoint": ENDPOINT, "errors": batch.errors,
        "input_file_id": batch.input_file_id, "completion_window": "24h", "status": state,
        "output_file_id": output_file_id, "error_file_id": error_file_id,
        "created_at": batch.created_at, "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at, "finalizing_at": ended,
        "completed_at": ended if state == "completed" else None, "failed_at": batch.failed_at,
        "expired_at": int(time.time()) if state == "expired" else None,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": ended if state == "cancelled" else None,
        "request_counts": {"total": batch.total, "completed": counts.get("docs_done", 0),
                           "failed": counts.get("docs_failed", 0)},
        "metadata": batch.metadata,
    }  # fmt: skip


def public(svc: Services, batch: BatchRecord) -> dict[str, object]:
    """OpenAI's batch object: the record, and its job's status and counts."""
    return _object(batch, job_of(svc, batch))
