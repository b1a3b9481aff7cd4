"""The OpenAPI 3.1 document, built from the pydantic models that validate requests
(common/schemas.py) and describe answers (common/responses.py).

Routes are described by `Operation` specs in a small registry. A front adds its own
paths by registering specs from a module that the app imports, e.g.:

    from api import openapi
    from api.openapi import Body, Operation, Reply

    openapi.register(
        Operation("post", "/v1/embeddings", "Create embeddings (OpenAI)", tag="OpenAI",
                  bodies=(Body(MyRequest),), responses={200: Reply("The vectors", MyAnswer)},
                  errors=(400, 401, 404, 429, 503)),
    )

Every operation gets the X-Request-ID parameter, the X-Request-ID header on every
answer, and the shared error body for each status in `errors`. tests/test_openapi.py
checks that every Flask route is documented and every documented path is routed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from common.responses import ErrorResponse

REF = "#/components/schemas/{model}"

ERRORS: dict[int, str] = {
    400: "Invalid request: the message and `param` say what to fix.",
    401: "Missing, wrong or expired API key.",
    403: "The key may not do this: an admin route, or a model outside its list.",
    404: "Unknown model, job or route.",
    405: "Method not allowed on this route.",
    409: "Conflict (a cancelled job; a model whose dimensions are not known yet).",
    413: "Larger than a limit: the body (MAX_REQUEST_BYTES; uploads: MAX_UPLOAD_BYTES), a "
    "document (MAX_DOCUMENT_BYTES), a file (MAX_FILE_BYTES), or more than MAX_QUEUED_BYTES "
    "or STORAGE_BYTES_PER_KEY take at once.",
    415: "Unsupported content type.",
    429: "Rate limited: retry after the Retry-After header.",
    500: "Internal error (a bug: the request id in X-Request-ID finds its logs).",
    502: "The remote provider answered with an error.",
    503: "Redis, the provider, or every worker for the model is unavailable; or the queues "
    "are full (MAX_QUEUE_DEPTH, MAX_QUEUED_BYTES): retry after Retry-After.",
    504: "Timed out: the job goes on; poll error.status_url.",
    507: "Redis is nearly full (REDIS_MAX_FILL_RATIO), or the key holds its share "
    "(STORAGE_BYTES_PER_KEY): new work is refused until results expire or files are deleted.",
}

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: yours from X-Request-ID, or a new one. "
        "It is in every log line about the request, API and worker.",
        "schema": {"type": "string"},
    },
    "X-Cache": {
        "description": "hit: every text came from the cache; partial: some; miss: none.",
        "schema": {"type": "string", "enum": ["hit", "partial", "miss"]},
    },
    "Location": {"description": "Where to poll the new job.", "schema": {"type": "string"}},
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    },
    "X-Next-Cursor": {
        "description": "Batch number to resume the download at; absent once all is sent.",
        "schema": {"type": "string"},
    },
    "X-Job-Status": {"description": "The job's status now.", "schema": {"type": "string"}},
    "X-Results-Complete": {
        "description": "true: the job has settled and this is the end of its results; "
        "false: rows may still be added (running or cancelling): resume at X-Next-Cursor.",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "RequestId": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Your id for the request (letters, digits, ._:@/+=-, up to 128); "
        "returned and logged. A new one is made when absent or malformed.",
        "schema": {"type": "string", "maxLength": 128},
    },
    "CacheControl": {
        "name": "Cache-Control",
        "in": "header",
        "required": False,
        "description": "no-cache: compute afresh, then store; no-store: neither read nor write "
        "the embedding cache.",
        "schema": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Body:
    """One content type of a request body: a model, or a raw JSON Schema."""

    model: type[BaseModel] | None = None
    content_type: str = "application/json"
    schema: dict[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """One answer: its description, body (model or raw schema) and header names."""

    description: str
    model: type[BaseModel] | None = None
    content_type: str = "application/json"
    schema: dict[str, Any] | None = None
    headers: tuple[str, ...] = ()
    alternatives: tuple[Body, ...] = ()
    """Other content types of the same answer (e.g. a download format)."""


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post", "put", "patch", "delete"]
    path: str
    """OpenAPI style: /api/v1/jobs/{job_id}."""
    summary: str
    tag: str
    responses: dict[int, Reply]
    operation_id: str | None = None
    description: str = ""
    bodies: tuple[Body, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    errors: tuple[int, ...] = ()
    body_required: bool = True


_registry: dict[tuple[str, str], Operation] = {}


def register(*operations: Operation) -> None:
    """Add (or replace) operations; the document is built from them on each request."""
    for op in operations:
        _registry[(op.path, op.method)] = op


def operations() -> list[Operation]:
    return list(_registry.values())


def path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}  # fmt: skip


def _models(ops: list[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorResponse, "serialization"): None
    }
    for op in ops:
        for body in op.bodies:
            if body.model is not None:
                found[(body.model, "validation")] = None
        for reply in op.responses.values():
            for model in (reply.model, *(alt.model for alt in reply.alternatives)):
                if model is not None:
                    found[(model, "serialization")] = None
    return list(found)


def _content(model_ref: dict[str, Any] | None, schema: dict[str, Any] | None) -> dict[str, Any]:
    return {"schema": model_ref if model_ref is not None else (schema or {})}


def _operation(op: Operation, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    def ref(model: type[BaseModel] | None, mode: JsonSchemaMode) -> dict[str, Any] | None:
        return refs[(model, mode)] if model is not None else None

    out: dict[str, Any] = {
        "operationId": op.operation_id or f"{op.method}_{op.path.strip('/').replace('/', '_')}",
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": [*op.parameters, {"$ref": "#/components/parameters/RequestId"}],
    }
    if op.description:
        out["description"] = op.description
    if op.bodies:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {
                b.content_type: _content(ref(b.model, "validation"), b.schema) for b in op.bodies
            },
        }
        described = [b.description for b in op.bodies if b.description]
        if described:
            out["requestBody"]["description"] = " ".join(described)
    responses: dict[str, Any] = {}
    request_id = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    for status, reply in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": reply.description}
        content = {}
        if reply.model is not None or reply.schema is not None:
            content[reply.content_type] = _content(ref(reply.model, "serialization"), reply.schema)
        for alt in reply.alternatives:
            content[alt.content_type] = _content(ref(alt.model, "serialization"), alt.schema)
        if content:
            entry["content"] = content
        entry["headers"] = request_id | {
            name: {"$ref": f"#/components/headers/{name}"} for name in reply.headers
        }
        responses[str(status)] = entry
    for status in op.errors:
        responses.setdefault(str(status), {"$ref": f"#/components/responses/Error{status}"})
    out["responses"] = responses
    return out


def build(title: str = "Embeddings service", version: str = "1.0.0") -> dict[str, Any]:
    """The whole document, from the operations registered now."""
    ops = sorted(operations(), key=lambda op: (op.path, op.method))
    models = _models(ops)
    refs, defs = models_json_schema(models, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    error_ref = refs[(ErrorResponse, "serialization")]
    statuses = sorted({s for op in ops for s in op.errors})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Embeddings over HTTP: synchronous, submit-and-poll jobs and bulk "
            "indexing, computed by Celery workers (local models, Ollama, OpenAI). Errors have "
            'the body {"error": {"type", "message", "param"}}.',
        },
        # Tags in the order their first operation was registered: the native API first.
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in operations())],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "responses": {
                f"Error{status}": {
                    "description": ERRORS.get(status, "Error."),
                    "headers": {
                        "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
                        **(
                            {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
                            if status in (429, 503)
                            else {}
                        ),
                    },
                    "content": {"application/json": {"schema": error_ref}},
                }
                for status in statuses
            },
        },
    }
