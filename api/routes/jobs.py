"""Async jobs: POST /api/v1/jobs, GET and DELETE /api/v1/jobs/<id>."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, url_for

from api import dispatch
from api.body import json_body
from api.services import services
from common.schemas import parse_request

bp = Blueprint("jobs", __name__)


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status, headers=headers, mimetype="application/json",
    )  # fmt: skip


@bp.post("/api/v1/jobs")
def create_job() -> Response:
    svc = services()
    req = parse_request(json_body(), svc.settings.MAX_INPUTS)
    job_id = dispatch.submit(svc, svc.registry.get(req.model), req)
    status_url = url_for("jobs.get_job", job_id=job_id)
    body = {"id": job_id, "status": "queued", "status_url": status_url}
    return _json(body, 202, headers={"Location": status_url})


@bp.get("/api/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    svc = services()
    return _json(
        dispatch.job_body(svc, svc.jobs.get(job_id), url_for("jobs.get_job", job_id=job_id))
    )


@bp.delete("/api/v1/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel an active job; cancelling a finished one changes nothing and says so."""
    svc = services()
    svc.jobs.get(job_id)  # 404 for unknown ids
    svc.jobs.cancel(job_id)
    return get_job(job_id)
