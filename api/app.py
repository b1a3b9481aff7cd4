"""The Flask app factory: tests call create_app(settings) with their own settings."""

from __future__ import annotations

import logging

from flask import Flask

from api import errors
from api.routes import cache, embeddings, health, jobs, models
from api.services import Services
from common.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.LOG_LEVEL.upper())
    app = Flask("embeddings-api")
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_REQUEST_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["embeddings"] = Services.build(settings)
    errors.register(app)
    for blueprint in (embeddings.bp, jobs.bp, models.bp, cache.bp, health.bp):
        app.register_blueprint(blueprint)
    return app
