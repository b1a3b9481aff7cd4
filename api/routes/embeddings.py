"""POST /api/v1/embeddings: embed and wait (up to REQUEST_TIMEOUT_SECONDS)."""

from __future__ import annotations

from flask import Blueprint, Response

from api import pipeline
from api.render import embeddings_body, json_response
from api.services import services
from api.sync_calls import embed_now

bp = Blueprint("embeddings", __name__)


@bp.post("/api/v1/embeddings")
def create_embeddings() -> Response:
    prep, call = pipeline.prepare_native(services())
    outcome = embed_now(prep, call)
    body = embeddings_body(
        outcome.model, outcome.matrix, outcome.prompt_tokens, prep.encoding_format
    )
    return json_response(body, headers={"X-Cache": outcome.cache})
