"""Response bodies of the native API: the shapes at the edge."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
from flask import Response

from api.services import Services
from common.jobs import Job, JobStatus
from common.vectors import to_base64


def json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status, headers=headers, mimetype="application/json",
    )  # fmt: skip


def embeddings_body(
    model: str, matrix: np.ndarray, prompt_tokens: int, encoding_format: str
) -> dict[str, object]:
    rows: list[object] = (
        [to_base64(row) for row in matrix] if encoding_format == "base64" else list(matrix)
    )
    return {
        "model": model,
        "data": [{"index": i, "embedding": row} for i, row in enumerate(rows)],
        "dimensions": int(matrix.shape[1]),
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def job_body(svc: Services, job: Job, status_url: str, result: bool = True) -> dict[str, object]:
    """A job as its routes show it; with `result`, its vectors once it succeeded."""
    body: dict[str, object] = {
        "id": job.id,
        "status": job.status.value,
        "status_url": status_url,
        "model": job.model,
        "count": job.count,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }
    if result and job.status is JobStatus.SUCCEEDED:
        fmt = str(job.options.get("encoding_format", "float"))
        body["result"] = embeddings_body(job.model, svc.jobs.vectors(job), job.prompt_tokens, fmt)
    if job.error:
        body["error"] = job.error
    return body
