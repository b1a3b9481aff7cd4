"""Ollama's API: POST /api/embed and /api/embeddings (legacy), GET /api/tags, POST /api/show,
GET /api/version. Errors are {"error": "..."} with Ollama's status codes.

`options` and `keep_alive` are accepted and ignored: models here stay loaded.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import Blueprint, Response
from werkzeug.exceptions import HTTPException

from api import auth, pipeline
from api.body import json_body
from api.call import current
from api.errors import http_type, note_type, status_of, type_of
from api.render import json_response
from api.routes.models import listed
from api.services import services
from api.sync_calls import embed_now
from common import errors
from common.registry import ModelSpec
from common.schemas import parse_request

bp = Blueprint("ollama", __name__)

VERSION = "0.12.0"
"""The Ollama API version whose shapes these routes follow."""
STARTED = datetime.now(UTC).isoformat()


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


@bp.errorhandler(errors.ServiceError)
def _service_error(error: errors.ServiceError) -> Response:
    note_type(type_of(error))
    if isinstance(error, errors.ModelNotFound):
        return _error(404, f'model "{error.model}" not found, try pulling it first')
    return _error(status_of(error), error.message)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    note_type(http_type(error))
    return _error(error.code or 500, error.description or "error")


def _body() -> dict[str, object]:
    body = json_body()
    if not isinstance(body, dict):
        raise errors.InvalidRequest("the request body must be a JSON object")
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        raise errors.InvalidRequest("model is required")
    return body | {"model": model}


def _embed(body: dict[str, object], texts: object, normalize: bool) -> pipeline.Outcome:
    native = {"model": body["model"], "input": texts, "normalize": normalize,
              "truncate": body.get("truncate", True)}  # fmt: skip
    if body.get("dimensions") is not None:
        native["dimensions"] = body["dimensions"]
    svc = services()
    req = parse_request(native, svc.settings.MAX_INPUTS)
    call = current()
    return embed_now(pipeline.prepare(svc, req, call), call)


@bp.post("/api/embed")
def embed() -> Response:
    """Normalized vectors, like Ollama's /api/embed."""
    started = time.perf_counter_ns()
    body = _body()
    outcome = _embed(body, body.get("input"), normalize=True)
    return json_response(
        {
            "model": outcome.model,
            "embeddings": outcome.matrix,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": outcome.prompt_tokens,
        }
    )


@bp.post("/api/embeddings")
def embeddings() -> Response:
    """The legacy route: one prompt, a raw (not normalized) vector, as Ollama gives it."""
    body = _body()
    if not isinstance(body.get("prompt"), str):  # a list would quietly lose all but one
        raise errors.InvalidRequest(
            "prompt must be one string; for several texts use /api/embed with input: [...]"
        )
    outcome = _embed(body, body.get("prompt"), normalize=False)
    return json_response({"embedding": outcome.matrix[0]})


def _details(spec: ModelSpec) -> dict[str, object]:
    return {"parent_model": "", "format": spec.provider.value, "family": spec.provider.value,
            "families": [spec.provider.value], "parameter_size": "",
            "quantization_level": spec.backend}  # fmt: skip


@bp.get("/api/tags")
def tags() -> Response:
    models = [
        {"name": s.name, "model": s.name, "modified_at": STARTED, "size": 0,
         "digest": s.revision, "details": _details(s)}
        for s in services().registry if listed(s)
    ]  # fmt: skip
    return json_response({"models": models})


@bp.post("/api/show")
def show() -> Response:
    spec = services().registry.get(str(_body()["model"]))
    auth.check_model(spec.name)
    info = {"general.architecture": spec.provider.value,
            "embedding_length": spec.dimensions, "context_length": spec.max_tokens}  # fmt: skip
    return json_response({
        "modelfile": "", "parameters": "", "template": "", "license": "",
        "details": _details(spec), "model_info": info, "capabilities": ["embedding"],
        "modified_at": STARTED,
    })  # fmt: skip


@bp.get("/api/version")
def version() -> Response:
    return json_response({"version": VERSION})
