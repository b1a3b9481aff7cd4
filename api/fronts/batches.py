"""OpenAI's Files and Batch APIs for /v1/embeddings, run as bulk index jobs.

Each request line becomes one "document" of an index job whose pieces are its inputs,
so a batch runs on the same workers, queues, cache and crash guarantees as bulk
indexing. Output and error files are built once, when the job has ended.
"""

from __future__ import annotations

import io
import time

import numpy as np
import orjson
from flask import Blueprint, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from api import indexing, storage
from api.auth import caller_key, owner
from api.body import json_body
from api.call import CachePolicy, current
from api.fronts.batch_store import BatchStore, FileStore, new_batch_id, new_file_id
from api.fronts.openai import native_body, use_openai_errors
from api.pipeline import bounded
from api.render import json_response
from api.services import Services, services
from common import dimensions, errors
from common.jobs import JobStatus
from common.schemas import EmbeddingRequest, EmbedOptions, parse_request
from common.storage import text_bytes
from common.tokenization import token_lengths
from common.vectors import to_base64, unpack

ENDPOINT = "/v1/embeddings"
MAX_REPORTED_ERRORS = 100
FORM_OVERHEAD_BYTES = 64 * 1024
"""A multipart body's boundaries and small fields, beside its file."""

bp = Blueprint("openai_batches", __name__)
use_openai_errors(bp)


def _stores(svc: Services) -> tuple[FileStore, BatchStore]:
    ttl = svc.settings.JOB_TTL_SECONDS
    return FileStore(svc.redis, ttl), BatchStore(svc.redis, ttl)


# Files


@bp.post("/v1/files")
def create_file() -> Response:
    """A file up to MAX_FILE_BYTES, counted against the caller's storage (api/storage.py)."""
    svc = services()
    limit = svc.settings.MAX_FILE_BYTES
    too_large = errors.PayloadTooLarge(
        f"file: more than {limit} bytes (MAX_FILE_BYTES); split it into smaller files", "file"
    )
    request.max_content_length = limit + FORM_OVERHEAD_BYTES
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:
        raise too_large from None
    purpose = request.form.get("purpose")
    if upload is None:
        raise errors.InvalidRequest("file: a multipart field named file is required", "file")
    if purpose != "batch":
        raise errors.InvalidRequest("purpose: only 'batch' files are accepted here", "purpose")
    content = upload.read(limit + 1)
    if len(content) > limit:
        raise too_large
    file_id = new_file_id()
    storage.admit(
        svc, owner(), len(content), "the file", key=caller_key(), queued=False, item=file_id
    )
    files, _ = _stores(svc)
    meta = files.create(content, upload.filename or "file", purpose, owner(), file_id)
    return json_response(meta)


@bp.get("/v1/files/<file_id>")
def get_file(file_id: str) -> Response:
    return json_response(_stores(services())[0].meta(file_id, owner()))


@bp.get("/v1/files/<file_id>/content")
def get_file_content(file_id: str) -> Response:
    content = _stores(services())[0].content(file_id, owner())
    return Response(content, mimetype="application/jsonl")


@bp.delete("/v1/files/<file_id>")
def delete_file(file_id: str) -> Response:
    _stores(services())[0].delete(file_id, owner())
    return json_response({"id": file_id, "object": "file", "deleted": True})


# Validation of the input file


def _line_error(line: int, message: str, param: str | None = None) -> dict[str, object]:
    return {"code": "invalid_request", "message": message, "param": param, "line": line}


def _parse_line(svc: Services, raw: bytes) -> tuple[str, EmbeddingRequest]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.InvalidRequest("not valid JSON") from None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        raise errors.InvalidRequest("each line needs a string custom_id", "custom_id")
    if line.get("method") != "POST" or line.get("url") != ENDPOINT:
        raise errors.InvalidRequest(f"method must be POST and url {ENDPOINT}", "url")
    return line["custom_id"], parse_request(native_body(svc, line.get("body")),
                                            svc.settings.MAX_INPUTS)  # fmt: skip


def _validate(svc: Services, content: bytes) -> tuple[dict[str, EmbeddingRequest], list[dict]]:
    requests: dict[str, EmbeddingRequest] = {}
    problems: list[dict[str, object]] = []
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            custom_id, req = _parse_line(svc, raw)
            if custom_id in requests:
                raise errors.InvalidRequest(f"duplicate custom_id {custom_id!r}", "custom_id")
            dimensions.check(svc.registry.get(req.model), req.dimensions)
            requests[custom_id] = req
        except (errors.ServiceError, ValidationError) as error:
            problems.append(_line_error(number, getattr(error, "message", str(error)),
                                        getattr(error, "param", None)))  # fmt: skip
    models = {req.model for req in requests.values()}
    if len(models) > 1:
        problems.append(_line_error(0, f"all requests must use one model, found {sorted(models)}"))
    if not requests and not problems:
        problems.append(_line_error(0, "the input file has no requests"))
    return requests, problems[:MAX_REPORTED_ERRORS]


# Batches


def _new_batch(body: dict[str, object]) -> dict[str, object]:
    now = int(time.time())
    return {
        "id": new_batch_id(), "object": "batch", "endpoint": ENDPOINT, "errors": None,
        "input_file_id": body["input_file_id"], "completion_window": "24h",
        "status": "validating", "output_file_id": None, "error_file_id": None,
        "created_at": now, "in_progress_at": None, "expires_at": now + 24 * 3600,
        "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
        "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"), "job_id": None,
    }  # fmt: skip


def _check_create(body: object) -> dict[str, object]:
    if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
        raise errors.InvalidRequest("input_file_id: required", "input_file_id")
    if body.get("endpoint") != ENDPOINT:
        raise errors.InvalidRequest(f"endpoint: only {ENDPOINT} is served here", "endpoint")
    if body.get("completion_window") != "24h":
        raise errors.InvalidRequest("completion_window: must be '24h'", "completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise errors.InvalidRequest("metadata: must be an object", "metadata")
    return body


def _start(svc: Services, batch: dict, requests: dict[str, EmbeddingRequest]) -> None:
    """Queue the requests as an index job: one document per request, one piece per input."""
    model = next(iter(requests.values())).model
    size = sum(text_bytes(req.texts) for req in requests.values())
    call = current().with_policy(CachePolicy())
    planner = indexing.start_job(svc, model, call, {}, EmbedOptions(), size=size)
    tokenizer = planner.spec.tokenizer_file()
    details: dict[str, bytes] = {}
    for custom_id, req in requests.items():
        texts = bounded(planner.spec, req.texts, truncate=True)
        tokens = [min(n, planner.spec.max_tokens) for n in token_lengths(tokenizer, texts)]
        pieces = [indexing.Piece(t, n, i, 0, len(t)) for i, (t, n) in
                  enumerate(zip(texts, tokens, strict=True))]  # fmt: skip
        planner.add(custom_id, pieces)
        details[custom_id] = orjson.dumps({"encoding_format": req.encoding_format,
                                           "dimensions": req.dimensions,
                                           "tokens": sum(tokens)})  # fmt: skip
    _, batches = _stores(svc)
    batches.save_requests(batch["id"], details)
    batch |= {"job_id": indexing.finish(planner), "status": "in_progress",
              "in_progress_at": int(time.time())}  # fmt: skip
    batch["request_counts"]["total"] = len(requests)


@bp.post("/v1/batches")
def create_batch() -> Response:
    svc = services()
    body = _check_create(json_body())
    files, batches = _stores(svc)
    content = files.content(str(body["input_file_id"]), owner())
    batch = _new_batch(body)
    requests, problems = _validate(svc, content)
    if problems:
        batch |= {"status": "failed", "failed_at": int(time.time()),
                  "errors": {"object": "list", "data": problems}}  # fmt: skip
    else:
        _start(svc, batch, requests)
    batches.save(batch, owner())
    return json_response(_public(batch))


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "job_id"}


def _output_line(custom_id: str, body: dict | None, error: dict | None) -> bytes:
    response = None if body is None else {"status_code": 200, "request_id": custom_id,
                                          "body": body}  # fmt: skip
    line = {"id": "batch_req_" + custom_id, "custom_id": custom_id, "response": response,
            "error": error}  # fmt: skip
    return orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _render(model: str, vectors: np.ndarray, detail: dict) -> dict:
    vectors = dimensions.cut(vectors, detail.get("dimensions"))
    as_base64 = detail.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i, "embedding": to_base64(v) if as_base64 else v}
            for i, v in enumerate(vectors)]  # fmt: skip
    tokens = detail.get("tokens", 0)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _finalize(svc: Services, batch: dict) -> None:
    """Write the output file (one line per succeeded request) and the error file."""
    files, batches = _stores(svc)
    store, job_id = svc.index_jobs, batch["job_id"]
    job = store.get(job_id)
    output = io.BytesIO()
    for plan, packed in store.read_batches(job_id, store.stored_batches(job_id)):
        rows = unpack(packed, job.dimensions)
        ids = list(dict.fromkeys(str(row[0]) for row in plan))
        for custom_id, detail in zip(ids, batches.requests(batch["id"], ids), strict=True):
            mine = [i for i, row in enumerate(plan) if str(row[0]) == custom_id]
            output.write(_output_line(custom_id, _render(job.model, rows[mine], detail), None))
    failed = b"".join(
        _output_line(f["id"], None, {"code": "embedding_failed", "message": f["reason"]})
        for f in store.failures(job_id, limit=10**6)
    )
    if output.tell():
        batch["output_file_id"] = files.create(output.getvalue(), "output.jsonl",
                                               "batch_output", owner())["id"]  # fmt: skip
    if failed:
        batch["error_file_id"] = files.create(failed, "errors.jsonl", "batch_output", owner())["id"]


def _refresh(svc: Services, batch: dict) -> dict:
    """Follow the index job: counts while it runs; output files once it has ended."""
    if batch["status"] not in ("in_progress", "finalizing", "cancelling"):
        return batch
    _, batches = _stores(svc)
    job = svc.index_jobs.get(batch["job_id"])
    counts = job.counts
    batch["request_counts"] |= {"completed": counts["docs_done"], "failed": counts["docs_failed"]}
    if not job.status.terminal or not batches.claim_finalizing(batch["id"]):
        return batch
    now = int(time.time())
    batch["finalizing_at"] = batch["finalizing_at"] or now
    try:
        _finalize(svc, batch)
    except Exception:
        batches.release_finalizing(batch["id"])  # the next poll tries again
        raise
    if job.status is JobStatus.CANCELLED:
        batch |= {"status": "cancelled", "cancelled_at": now}
    else:
        batch |= {"status": "completed", "completed_at": now}
    batches.save(batch, owner())
    return batch


@bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    svc = services()
    return json_response(_public(_refresh(svc, _stores(svc)[1].get(batch_id, owner()))))


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    svc = services()
    _, batches = _stores(svc)
    batch = batches.get(batch_id, owner())
    if batch["status"] in ("validating", "in_progress"):
        svc.index_jobs.cancel(batch["job_id"])
        batch |= {"status": "cancelling", "cancelling_at": int(time.time())}
        batches.save(batch, owner())
    return json_response(_public(_refresh(svc, batch)))


@bp.get("/v1/batches")
def list_batches() -> Response:
    svc = services()
    _, batches = _stores(svc)
    raw_limit = request.args.get("limit", "20")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 100:
        raise errors.InvalidRequest("limit: an integer from 1 to 100", "limit")
    ids, more = batches.list(owner(), int(raw_limit), request.args.get("after"))
    data = [_public(_refresh(svc, batches.get(i, owner()))) for i in ids]
    return json_response({
        "object": "list", "data": data, "has_more": more,
        "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None,
    })  # fmt: skip
