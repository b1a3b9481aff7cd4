"""POST /api/v1/embeddings: embed and wait (up to REQUEST_TIMEOUT_SECONDS)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response

from api import dispatch
from api.body import json_body
from api.errors import JOB_ERROR_STATUS, error_response
from api.services import services
from common.errors import Conflict, Timeout
from common.jobs import JobStatus
from common.schemas import parse_request

bp = Blueprint("embeddings", __name__)


@bp.post("/api/v1/embeddings")
def create_embeddings() -> Response:
    svc = services()
    req = parse_request(json_body(), svc.settings.MAX_INPUTS)
    spec = svc.registry.get(req.model)
    job_id = dispatch.submit(svc, spec, req)
    job = svc.jobs.wait(job_id, svc.settings.REQUEST_TIMEOUT_SECONDS)
    if job.status is JobStatus.SUCCEEDED:
        body = dispatch.embeddings_body(job, svc.jobs.vectors(job), req.encoding_format)
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), mimetype="application/json"
        )
    if job.status is JobStatus.FAILED and job.error:
        status = JOB_ERROR_STATUS.get(job.error["type"], 500)
        return error_response(status, {**job.error, "param": None, "job_id": job_id})
    if job.status is JobStatus.CANCELLED:
        raise Conflict(f"job {job_id} was cancelled")
    raise Timeout(
        f"not done within {svc.settings.REQUEST_TIMEOUT_SECONDS:g}s; the job goes on: poll it",
        job_id,
    )
