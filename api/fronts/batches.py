"""OpenAI's Files and Batch APIs for /v1/embeddings, run as bulk index jobs.

Each request line becomes one "document" of an index job whose pieces are its inputs,
so a batch runs on the same workers, queues, cache and crash guarantees as bulk
indexing. A batch's status and counts are its job's, read on each GET; its output and
error files are streamed from the job's results (api/fronts/batch_output.py).
"""

from __future__ import annotations

import time
from dataclasses import replace

import orjson
from flask import Blueprint, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from api import indexing, storage
from api.auth import caller_key, owner
from api.body import json_body
from api.call import CachePolicy, current
from api.fronts import batch_output, batch_view
from api.fronts.batch_store import (
    BatchRecord,
    BatchStore,
    FileStore,
    ResultFile,
    new_batch_id,
    new_file_id,
)
from api.fronts.batch_view import ENDPOINT
from api.fronts.openai import native_body, use_openai_errors
from api.pipeline import bounded
from api.render import json_response
from api.services import Services, services
from common import dimensions, errors
from common.index_jobs import IndexJob
from common.schemas import EmbeddingRequest, EmbedOptions, parse_request
from common.storage import text_bytes
from common.tokenization import token_lengths

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


def _result_file(svc: Services, file_id: str) -> tuple[ResultFile, IndexJob] | None:
    """A batch's output or error file and the job holding its lines (404 until the job has
    ended with such lines); None for an uploaded file."""
    files, batches = _stores(svc)
    found = files.result(file_id, owner())
    if found is None:
        return None
    batch = batches.get(found.batch_id, owner())
    job = batch_view.job_of(svc, batch)
    if job is None or file_id not in batch_view.result_ids(batch, job):
        raise errors.NotFound(f"no file {file_id!r}", param="file_id")
    return found, job


@bp.get("/v1/files/<file_id>")
def get_file(file_id: str) -> Response:
    svc = services()
    files, batches = _stores(svc)
    result = _result_file(svc, file_id)
    if result is None:
        return json_response(files.meta(file_id, owner()))
    return json_response(batch_output.meta(svc.index_jobs, batches, *result))


@bp.get("/v1/files/<file_id>/content")
def get_file_content(file_id: str) -> Response:
    svc = services()
    files, batches = _stores(svc)
    result = _result_file(svc, file_id)
    if result is None:
        return Response(files.content(file_id, owner()), mimetype="application/jsonl")
    lines = batch_output.lines(svc.index_jobs, batches, *result)
    return Response(lines, mimetype="application/jsonl")


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


def _new_batch(body: object) -> BatchRecord:
    """The record of the batch a request body asks for; 400 for one OpenAI would refuse."""
    if not isinstance(body, dict) or not isinstance(input_file_id := body.get("input_file_id"),
                                                    str):  # fmt: skip
        raise errors.InvalidRequest("input_file_id: required", "input_file_id")
    if body.get("endpoint") != ENDPOINT:
        raise errors.InvalidRequest(f"endpoint: only {ENDPOINT} is served here", "endpoint")
    if body.get("completion_window") != "24h":
        raise errors.InvalidRequest("completion_window: must be '24h'", "completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise errors.InvalidRequest("metadata: must be an object", "metadata")
    now = int(time.time())
    return BatchRecord(id=new_batch_id(), input_file_id=input_file_id, created_at=now,
                       expires_at=now + 24 * 3600, metadata=metadata)  # fmt: skip


def _start(svc: Services, batch: BatchRecord, requests: dict[str, EmbeddingRequest]
           ) -> BatchRecord:  # fmt: skip
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
    files, batches = _stores(svc)
    batches.save_requests(batch.id, details)
    return replace(
        batch, job_id=indexing.finish(planner), in_progress_at=int(time.time()),
        total=len(requests), output_file_id=files.reserve(batch.id, "output", owner()),
        error_file_id=files.reserve(batch.id, "error", owner()),
    )  # fmt: skip


@bp.post("/v1/batches")
def create_batch() -> Response:
    svc = services()
    batch = _new_batch(json_body())
    files, batches = _stores(svc)
    content = files.content(batch.input_file_id, owner())
    requests, problems = _validate(svc, content)
    if problems:
        batch = replace(batch, errors={"object": "list", "data": problems},
                        failed_at=int(time.time()))  # fmt: skip
    else:
        batch = _start(svc, batch, requests)
    batches.save(batch, owner())
    return json_response(batch_view.public(svc, batch))


@bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    svc = services()
    return json_response(batch_view.public(svc, _stores(svc)[1].get(batch_id, owner())))


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    svc = services()
    _, batches = _stores(svc)
    batch = batches.get(batch_id, owner())
    job = batch_view.job_of(svc, batch)
    if job is not None and batch_view.status(batch, job) == "in_progress":
        svc.index_jobs.cancel(job.id)
        batch = replace(batch, cancelling_at=int(time.time()))
        batches.save(batch, owner())
    return json_response(batch_view.public(svc, batch))


@bp.get("/v1/batches")
def list_batches() -> Response:
    svc = services()
    _, batches = _stores(svc)
    raw_limit = request.args.get("limit", "20")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 100:
        raise errors.InvalidRequest("limit: an integer from 1 to 100", "limit")
    ids, more = batches.list(owner(), int(raw_limit), request.args.get("after"))
    data = [batch_view.public(svc, batches.get(i, owner())) for i in ids]
    return json_response({
        "object": "list", "data": data, "has_more": more,
        "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None,
    })  # fmt: skip
