"""API keys over HTTP, for admin keys: POST /api/v1/keys (the key's text, once), GET (list),
PATCH /api/v1/keys/<id> (limits), DELETE /api/v1/keys/<id> (revoke). Every change is an
audit line naming the admin key that made it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, Response
from pydantic import ValidationError

from api import auth
from api.body import json_body
from api.render import json_response
from api.services import services
from common.api_keys import KeyStore, NewKey
from common.audit import audit
from common.errors import InvalidRequest, NotFound
from common.schemas import first_error

bp = Blueprint("keys", __name__)
T = TypeVar("T")


@bp.before_request
def _admins_only() -> None:
    auth.require_admin("managing API keys")


def _store() -> KeyStore:
    return KeyStore(services().redis)


def _valid(build: Callable[[], T]) -> T:
    try:
        return build()
    except ValidationError as error:
        param, message = first_error(error)
        raise InvalidRequest(f"{param}: {message}", param=param) from None


def _object() -> dict[str, object]:
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", param="body")
    return body


@bp.post("/api/v1/keys")
def create_key() -> Response:
    new = _valid(lambda: NewKey.model_validate(_object()))
    key, text = _store().create(new.name, new.role, new.limits())
    audit("key_created", actor=auth.owner(), key_id=key.id, role=key.role, via="http")
    return json_response({**key.public(), "key": text}, 201)


@bp.get("/api/v1/keys")
def list_keys() -> Response:
    return json_response({"data": [key.public() for key in _store().list()]})


@bp.patch("/api/v1/keys/<key_id>")
def update_key(key_id: str) -> Response:
    changes = _object()
    key = _valid(lambda: _store().update(key_id, changes))
    if key is None:
        raise NotFound(f"no API key {key_id!r}", param="key_id")
    audit("key_updated", actor=auth.owner(), key_id=key_id, changed=sorted(changes), via="http")
    return json_response(key.public())


@bp.delete("/api/v1/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    if not _store().revoke(key_id):
        raise NotFound(f"no API key {key_id!r}", param="key_id")
    audit("key_revoked", actor=auth.owner(), key_id=key_id, via="http")
    return json_response({"id": key_id, "revoked": True})
