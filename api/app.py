"""The Flask app factory: tests call create_app(settings) with their own settings."""

from __future__ import annotations

from flask import Flask

from api import auth, errors, metrics, request_context, sync_calls
from api.fronts import batches, ollama, openai
from api.routes import cache, docs, embeddings, health, index_jobs, jobs, models, probes, usage
from api.routes import keys as api_keys
from api.services import Services
from common import logs
from common.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    logs.configure(settings.LOG_LEVEL, settings.RUST_LOG, "api", settings.LOG_FORMAT)
    app = Flask("embeddings-api")
    # First: every later hook, handler and log line sees the request id.
    request_context.init_app(app)
    metrics.init_app(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_REQUEST_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["embeddings"] = Services.build(settings)
    auth.init_app(app)
    sync_calls.init_app(app)
    errors.register(app)
    for blueprint in (embeddings.bp, jobs.bp, index_jobs.bp, models.bp, cache.bp, health.bp):
        app.register_blueprint(blueprint)
    for blueprint in (api_keys.bp, usage.bp, probes.bp, docs.bp, openai.bp, batches.bp,
                      ollama.bp):  # fmt: skip
        app.register_blueprint(blueprint)
    return app
