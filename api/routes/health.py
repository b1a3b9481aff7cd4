"""GET /health: Redis, workers per queue, models and cache, answered from Redis in one go."""

from __future__ import annotations

import time

import redis
from flask import Blueprint, Response, jsonify

from api.pipeline import pick_queue
from api.routes.models import model_entry
from api.services import services
from common.queueing import QueueName

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> tuple[Response, int]:
    svc = services()
    started = time.perf_counter()
    try:
        svc.redis.ping()
        latency_ms = (time.perf_counter() - started) * 1000
        depths = {q.value: int(svc.redis.llen(q.value)) for q in QueueName}
        workers = svc.workers()
    except redis.RedisError as error:
        body = {
            "status": "down",
            "redis": {"ok": False, "error": type(error).__name__},
            "queues": {},
            "workers": [],
            "models": [],
            "cache": {"entries": 0, "hits": 0, "misses": 0, "hit_ratio": 0.0},
        }
        return jsonify(body), 503
    queues = {
        name: {"depth": depth, "workers": sum(name in w.queues for w in workers)}
        for name, depth in depths.items()
    }
    default_queue = pick_queue(svc, svc.registry.get(None))
    serving = queues.get(default_queue, {}).get("workers", 0) > 0
    body = {
        "status": "ok" if serving else "degraded",
        "redis": {"ok": True, "latency_ms": round(latency_ms, 2)},
        "queues": queues,
        "workers": [
            {"name": w.name, "queues": w.queues, "device": w.device, "models": w.models}
            for w in workers
        ],
        "models": [model_entry(svc, spec) for spec in svc.registry if spec.enabled],
        "default_model": svc.registry.default,
        "cache": svc.cache.stats(),
    }
    return jsonify(body), 200
