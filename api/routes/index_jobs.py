"""Bulk indexing: /api/v1/index-jobs (submit, list), /<id> (progress, cancel), /<id>/results."""

from __future__ import annotations

import time

from flask import Blueprint, Response, request, send_file, url_for

from api import index_results, indexing, listing
from api.auth import owner_filter
from api.call import current
from api.render import iso, json_response
from api.services import services
from api.uploads import read_upload
from common.errors import InvalidRequest
from common.index_jobs import IndexJob
from common.sinks import public

bp = Blueprint("index_jobs", __name__)


def _urls(job_id: str) -> dict[str, str]:
    return {
        "status_url": url_for("index_jobs.get_index_job", job_id=job_id),
        "results_url": url_for("index_jobs.get_results", job_id=job_id),
    }


def _progress(job: IndexJob) -> dict[str, object]:
    counts = job.counts
    elapsed = ((job.finished_at or time.time()) - job.started_at) if job.started_at else 0.0
    rate = counts["chunks_done"] / elapsed if elapsed > 0 else 0.0
    left = counts["chunks_total"] - counts["chunks_done"] - counts["chunks_failed"]
    return {
        "id": job.id,
        "status": job.status.value,
        "model": job.model,
        "submitting": job.submitting,
        "documents": {k: counts[f"docs_{k}"] for k in ("total", "done", "failed")},
        "chunks": {k: counts[f"chunks_{k}"] for k in ("total", "done", "failed")},
        "batches": counts["batches_total"],
        "chunking": job.chunking,
        "dimensions": job.dimensions,
        "sink": job.sink,
        "sink_error": job.sink_error,
        "rate": {
            "chunks_per_second": round(rate, 2),
            "documents_per_second": round(counts["docs_done"] / elapsed, 2) if elapsed else 0.0,
        },
        "eta_seconds": round(left / rate, 1) if rate and not job.status.terminal else None,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        **_urls(job.id),
    }


@bp.post("/api/v1/index-jobs")
def create_index_job() -> Response:
    svc = services()
    upload = read_upload(svc.settings, lambda options: indexing.check_sink(svc, options.sink))
    with upload.spool:
        job_id = indexing.submit(svc, upload, current(), request.headers.get("Cache-Control"))
    body = {"id": job_id, "status": "queued", "documents": upload.valid,
            "rejected": len(upload.rejected), **_urls(job_id)}  # fmt: skip
    return json_response(body, 202, headers={"Location": body["status_url"]})


@bp.get("/api/v1/sinks")
def list_sinks() -> Response:
    """The result sinks an index job may name: names and kinds, never paths or DSNs."""
    return json_response({"data": public(services().sinks)})


@bp.get("/api/v1/index-jobs/<job_id>")
def get_index_job(job_id: str) -> Response:
    svc = services()
    job = svc.index_jobs.get(job_id, owner_filter())
    body = _progress(job) | {"failures": svc.index_jobs.failures(job_id)}
    return json_response(body)


@bp.delete("/api/v1/index-jobs/<job_id>")
def cancel_index_job(job_id: str) -> Response:
    """No new batches start; what is done stays downloadable. The job is `cancelling`
    until the batches already started end, then `cancelled`."""
    svc = services()
    svc.index_jobs.get(job_id, owner_filter())
    svc.index_jobs.cancel(job_id)
    return get_index_job(job_id)


@bp.get("/api/v1/index-jobs")
def list_index_jobs() -> Response:
    limit = listing.limit()
    jobs = services().index_jobs.listing.page(listing.listed_owner("index jobs"), limit,
                                          listing.after())  # fmt: skip
    data = [_progress(job) for job in jobs]
    return json_response({"data": data, "next_cursor": listing.next_cursor(jobs, limit)})


def _window(
    job: IndexJob, stored: set[int], failed: set[int], start: int, limit: int
) -> tuple[list[int], int | None]:
    """Stored batches to send from `start`, and the cursor to resume at (None: all sent).

    While a job runs, only the settled prefix is sent (batches finish out of order), so a
    resumed download neither skips nor repeats a batch. Failed batches have no rows.
    """
    total, finished = job.counts["batches_total"], job.status.terminal and not job.submitting
    emit: list[int] = []
    batch = start
    while batch < total and len(emit) < limit:
        if batch in stored:
            emit.append(batch)
        elif batch not in failed and not finished:
            break
        batch += 1
    return emit, (None if finished and batch >= total else batch)


@bp.get("/api/v1/index-jobs/<job_id>/results")
def get_results(job_id: str) -> Response:
    """Results from batch `cursor` on (at most `limit` batches), in a stable order.

    X-Next-Cursor says where to resume; it is absent once everything has been sent.
    X-Results-Complete is `true` only then: while the job runs or is `cancelling`, rows
    may still be added, so the download is `false` (incomplete), whatever it holds.
    """
    svc = services()
    store = svc.index_jobs
    job = store.get(job_id, owner_filter())
    fmt = request.args.get("format", "ndjson")
    if fmt not in ("ndjson", "npy", "npz"):
        raise InvalidRequest("format: ndjson, npy or npz", param="format")
    source = index_results.source(svc, job)
    emit, cursor = _window(
        job, set(store.stored_batches(job_id)), set(store.failed_batches(job_id)),
        listing.int_arg("cursor", 0, 0, 10**9), listing.int_arg("limit", 10**9, 1, 10**9),
    )  # fmt: skip
    headers = {"X-Job-Status": job.status.value, "X-Results-Complete": str(cursor is None).lower()}
    if cursor is not None:
        headers["X-Next-Cursor"] = str(cursor)
    if fmt == "npz":
        archive = index_results.npz(source, emit)
        response = send_file(archive, mimetype="application/zip", download_name=f"{job_id}.npz")
        response.headers.update(headers)
        return response
    if fmt == "npy":
        stream = index_results.npy(source, emit)
        return Response(stream, mimetype="application/octet-stream", headers=headers)
    return Response(
        index_results.ndjson(source, emit), mimetype="application/x-ndjson", headers=headers
    )
