"""Probes for orchestrators, beside the rich GET /health.

GET /livez: the process answers HTTP. No Redis call, so a Redis outage never restarts
the API (it answers 503 on its own while Redis is away).
GET /readyz: 200 when Redis answers and at least one worker serves the queue the default
model's requests go to; 503 with the reason otherwise, so a load balancer sends traffic
elsewhere until then.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Response

from api.dispatch import pick_queue
from api.render import json_response
from api.services import services

bp = Blueprint("probes", __name__)


@bp.get("/livez")
def livez() -> Response:
    return json_response({"status": "alive"})


@bp.get("/readyz")
def readyz() -> Response:
    svc = services()
    try:
        svc.redis.ping()
        default = svc.registry.get(None)
        queue = str(pick_queue(svc, default))
        serving = sum(queue in w.queues for w in svc.workers())
    except redis.RedisError as error:
        reason = f"Redis does not answer ({type(error).__name__})"
        return json_response({"status": "not_ready", "reason": reason}, 503)
    body: dict[str, object] = {
        "status": "ready" if serving else "not_ready",
        "default_model": default.name,
        "queue": queue,
        "workers": serving,
    }
    if not serving:
        body["reason"] = f"no worker serves the {queue!r} queue of {default.name!r}"
        return json_response(body, 503, headers={"Retry-After": "5"})
    return json_response(body)
