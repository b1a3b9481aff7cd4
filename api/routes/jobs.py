"""Async jobs: POST and GET (list) /api/v1/jobs, GET and DELETE /api/v1/jobs/<id>."""

from __future__ import annotations

from flask import Blueprint, Response, url_for

from api import listing, pipeline
from api.auth import owner_filter
from api.render import job_body, json_response
from api.services import services

bp = Blueprint("jobs", __name__)


@bp.post("/api/v1/jobs")
def create_job() -> Response:
    svc = services()
    prep, call = pipeline.prepare_native(svc)
    job_id = pipeline.submit(svc, prep, call)
    status_url = url_for("jobs.get_job", job_id=job_id)
    body = {"id": job_id, "status": "queued", "status_url": status_url}
    return json_response(body, 202, headers={"Location": status_url})


@bp.get("/api/v1/jobs")
def list_jobs() -> Response:
    """The caller's async jobs, newest first, without their vectors (GET each for those)."""
    svc, limit = services(), listing.limit()
    jobs = svc.jobs.listing.page(listing.listed_owner("jobs"), limit, listing.after())
    data = [job_body(svc, job, url_for("jobs.get_job", job_id=job.id), result=False)
            for job in jobs]  # fmt: skip
    return json_response({"data": data, "next_cursor": listing.next_cursor(jobs, limit)})


@bp.get("/api/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    svc = services()
    job = svc.jobs.get(job_id, owner_filter())
    return json_response(job_body(svc, job, url_for("jobs.get_job", job_id=job_id)))


@bp.delete("/api/v1/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel an active job; cancelling a finished one changes nothing and says so."""
    svc = services()
    svc.jobs.get(job_id, owner_filter())  # 404: unknown, or another key's (to a client)
    svc.jobs.cancel(job_id)
    return get_job(job_id)
