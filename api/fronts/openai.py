"""OpenAI's embeddings API: POST /v1/embeddings, GET /v1/models[/<id>].

Differences from api.openai.com, on purpose: inputs past the model's limit are truncated
(as other self-hosted servers do) rather than refused, and token-id inputs must be ids of
the model's own tokenizer (local models), not tiktoken ids.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response
from werkzeug.exceptions import HTTPException

from api import auth, pipeline
from api.body import json_body
from api.call import current
from api.errors import error_response, http_type, status_of, type_of
from api.render import json_response
from api.routes.models import listed
from api.services import Services, services
from api.sync_calls import embed_now
from common import errors
from common.registry import ModelSpec
from common.schemas import parse_request
from common.tokenization import load
from common.vectors import to_base64

bp = Blueprint("openai", __name__)

CREATED = int(time.time())


def openai_error(
    status: int, message: str, code: str | None, param: str | None,
    headers: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    """{"error": {"message", "type", "param", "code"}}; the SDK maps the status to a class."""
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    error_type = kind.get(status, "invalid_request_error" if status < 500 else "server_error")
    payload = {"message": message, "type": error_type, "param": param, "code": code}
    return error_response(status, payload, headers, kind=code)


def _service_error(error: errors.ServiceError) -> Response:
    return openai_error(status_of(error), error.message, type_of(error), error.param,
                        error.headers)  # fmt: skip


def _http_error(error: HTTPException) -> Response:
    code = http_type(error)
    return openai_error(error.code or 500, error.description or code, code, None)


def use_openai_errors(blueprint: Blueprint) -> None:
    """Errors raised in the blueprint's views answer in OpenAI's error shape."""
    blueprint.register_error_handler(errors.ServiceError, _service_error)
    blueprint.register_error_handler(HTTPException, _http_error)


use_openai_errors(bp)


def _decode_tokens(spec: ModelSpec, value: list[int] | list[list[int]]) -> list[str]:
    """Token-id inputs back to text with the model's own tokenizer."""
    path = spec.tokenizer_file()
    if path is None:
        raise errors.InvalidRequest(
            f"input: {spec.name} takes text only (token ids need a local tokenizer)", "input"
        )
    tokenizer = load(path)
    arrays = value if isinstance(value[0], list) else [value]
    size = tokenizer.get_vocab_size()
    for i, ids in enumerate(arrays):
        # type(t) is int: JSON true/false are no token ids; [[1], 2] mixes lists and ids.
        valid = isinstance(ids, list) and all(type(t) is int and 0 <= t < size for t in ids)
        if not ids or not valid:
            raise errors.InvalidRequest(
                f"input[{i}]: token ids must be a non-empty list of integers below {size}",
                param=f"input[{i}]",
            )
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in arrays]  # type: ignore[arg-type]


def _is_tokens(value: object) -> bool:
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    return isinstance(first, int) or (isinstance(first, list) and bool(first))


def native_body(svc: Services, body: object) -> dict[str, object]:
    """An OpenAI embeddings body as the native API's body (token ids decoded)."""
    if not isinstance(body, dict):
        raise errors.InvalidRequest("the request body must be a JSON object", param="body")
    if "model" not in body:
        raise errors.InvalidRequest("you must provide a model parameter", param="model")
    native = {k: v for k, v in body.items() if k in ("model", "input", "encoding_format",
                                                      "dimensions")}  # fmt: skip
    if not isinstance(body["model"], str | None):
        raise errors.InvalidRequest("model: must be a string", param="model")
    if _is_tokens(native.get("input")):
        spec = svc.registry.get(body["model"])  # type: ignore[arg-type]
        native["input"] = _decode_tokens(spec, native["input"])  # type: ignore[arg-type]
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise errors.InvalidRequest("user: must be a string", param="user")
    return native


@bp.post("/v1/embeddings")
def create_embeddings() -> Response:
    svc = services()
    req = parse_request(native_body(svc, json_body()), svc.settings.MAX_INPUTS)
    call = current()
    outcome = embed_now(pipeline.prepare(svc, req, call), call)
    as_base64 = req.encoding_format == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": to_base64(row) if as_base64 else row}
        for i, row in enumerate(outcome.matrix)
    ]
    usage = {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens}
    body = {"object": "list", "data": data, "model": outcome.model, "usage": usage}
    return json_response(body, headers={"X-Cache": outcome.cache})


def _model(spec: ModelSpec) -> dict[str, object]:
    return {"id": spec.name, "object": "model", "created": CREATED, "owned_by": spec.provider.value}


@bp.get("/v1/models")
def list_models() -> Response:
    svc = services()
    return json_response({"object": "list", "data": [_model(s) for s in svc.registry if listed(s)]})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    spec = services().registry.get(model_id)
    auth.check_model(spec.name)
    return json_response(_model(spec))
