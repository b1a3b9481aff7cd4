"""Reading an index job's documents: a JSON body, an NDJSON stream or a multipart file.

Documents are validated one by one and the good ones spooled to a temporary file
(memory up to SPOOL_MEMORY_BYTES, then disk), so an upload of any size is never held
whole in memory, and a refused upload (on_error=fail) queues nothing. Lines are read at
most MAX_DOCUMENT_BYTES at a time: a longer one is refused (413) before it is held whole.
A JSON body is read whole, so it is held to MAX_REQUEST_BYTES.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

import orjson
from flask import request
from pydantic import ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from api.body import json_body
from common.errors import InvalidRequest, PayloadTooLarge
from common.schemas import Document, IndexJobOptions, first_error
from common.settings import Settings

SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
NDJSON_TYPES = {"application/x-ndjson", "application/jsonl", "application/json-lines"}
LISTED_ERRORS = 20


class _Duplicate(InvalidRequest):
    """A document whose id an earlier document of the upload has."""


@dataclass
class Upload:
    options: IndexJobOptions
    spool: IO[bytes]
    valid: int = 0
    size: int = 0
    """Bytes of the valid documents, as spooled (what their tasks will carry, about)."""
    rejected: dict[str, str] = field(default_factory=dict)

    def documents(self) -> Iterator[Document]:
        self.spool.seek(0)
        for line in self.spool:
            yield Document.model_construct(**orjson.loads(line))


def _options(source: dict[str, object], strict: bool) -> IndexJobOptions:
    flat = {k: v for k, v in source.items() if v not in (None, "")}
    if not strict:  # query string or form fields: chunking options come flat
        chunking = {k: flat.pop(k) for k in ("max_tokens", "overlap_tokens") if k in flat}
        flat["chunking"] = chunking
    try:
        return IndexJobOptions.model_validate(flat, strict=strict)
    except ValidationError as error:
        param, message = first_error(error)
        raise InvalidRequest(f"{param}: {message}", param=param) from None


def _too_large(where: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{where}: the document is more than {limit} bytes (MAX_DOCUMENT_BYTES): split it; "
        "nothing was queued",
        param=where,
    )


BLOCK_BYTES = 1 << 16
"""Uploads are read in blocks and split into lines here: a read of the request body costs
far more than splitting (each one is paced, api/http_worker.py)."""


def _raw_lines(stream: IO[bytes], limit: int) -> Iterator[bytes]:
    """Each line of the stream; 413 for one longer than `limit` bytes, read no further.
    At most `limit` + a block is held at once."""
    pending, number = b"", 0
    while block := stream.read(BLOCK_BYTES):
        *lines, pending = (pending + block).split(b"\n")
        for line in lines:
            number += 1
            if len(line.rstrip(b"\r")) > limit:
                raise _too_large(f"line {number}", limit)
            yield line
        if len(pending.rstrip(b"\r")) > limit:
            raise _too_large(f"line {number + 1}", limit)
    if pending:
        yield pending


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[str, object]]:
    """Each line, parsed, with where it was."""
    for number, raw in enumerate(_raw_lines(stream, limit), start=1):
        if not raw.strip():
            continue
        try:
            yield f"line {number}", orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            yield f"line {number}", InvalidRequest(f"malformed JSON: {error}")


def _sources(settings: Settings) -> tuple[IndexJobOptions, Iterable[tuple[str, object]]]:
    mimetype = request.mimetype
    limit = settings.MAX_DOCUMENT_BYTES
    if mimetype == "application/json":
        request.max_content_length = min(settings.MAX_UPLOAD_BYTES, settings.MAX_REQUEST_BYTES)
        body = json_body()
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object", param="body")
        documents = body.pop("documents", None)
        if not isinstance(documents, list) or not documents:
            raise InvalidRequest("documents: a non-empty list is required", param="documents")
        options = _options(body, strict=True)
        return options, ((f"documents[{i}]", doc) for i, doc in enumerate(documents))
    if mimetype in NDJSON_TYPES:
        return _options(dict(request.args), strict=False), _lines(request.stream, limit)
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidRequest("send the JSONL documents in a form field named file", "file")
        options = _options({**request.args, **request.form}, strict=False)
        return options, _lines(upload.stream, limit)
    raise UnsupportedMediaType(
        "send application/json, application/x-ndjson, or multipart/form-data with a file"
    )


def read_upload(settings: Settings, check: Callable[[IndexJobOptions], object]) -> Upload:
    """Validate every document; refuse the upload, or list the bad ones (on_error=skip).

    `check` sees the options before any document is read. A document id seen before in
    the upload is a bad document: its rows could not be told apart in the results. One
    past MAX_DOCUMENT_BYTES refuses the upload (413), whatever on_error says.
    """
    request.max_content_length = settings.MAX_UPLOAD_BYTES
    options, items = _sources(settings)
    check(options)
    upload = Upload(options, tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES))  # noqa: SIM115 (the caller closes it)
    errors: list[str] = []
    first_seen: dict[str, str] = {}
    for where, item in items:
        try:
            if isinstance(item, InvalidRequest):
                raise item
            doc = Document.model_validate(item, strict=True)
            if (seen := first_seen.setdefault(str(doc.id), where)) != where:
                raise _Duplicate(f"duplicate id {str(doc.id)!r}: {seen} has it too")
        except (ValidationError, InvalidRequest) as error:
            if isinstance(error, ValidationError):
                param, message = first_error(error, prefix=where)
            else:
                param, message = where, error.message
            errors.append(f"{param}: {message}")
            doc_id = item.get("id") if isinstance(item, dict) else None
            # A duplicate is listed under its place: its id is the first one's, which runs.
            known = isinstance(doc_id, str | int) and not isinstance(error, _Duplicate)
            upload.rejected[str(doc_id) if known else where] = message
            continue
        line = orjson.dumps({"id": str(doc.id), "text": doc.text, "metadata": doc.metadata})
        if len(line) > settings.MAX_DOCUMENT_BYTES:  # a JSON body's document
            raise _too_large(where, settings.MAX_DOCUMENT_BYTES)
        upload.spool.write(line + b"\n")
        upload.valid += 1
        upload.size += len(line)
    if errors and options.on_error == "fail":
        shown = "; ".join(errors[:LISTED_ERRORS])
        more = f" (and {len(errors) - LISTED_ERRORS} more)" if len(errors) > LISTED_ERRORS else ""
        first_param = errors[0].split(":", 1)[0]
        raise InvalidRequest(
            f"{len(errors)} bad document(s), nothing was queued: {shown}{more}. "
            "Send on_error=skip to run the good ones.",
            param=first_param,
        )
    if not upload.valid:
        raise InvalidRequest("no valid documents in the upload", param="documents")
    return upload
