"""GET /health: Redis, workers per queue, providers, models and cache, answered from Redis.

Providers are reported from what the remote workers keep in Redis (last call outcome,
circuit breaker, Ollama's /api/tags probed every ~30 s): a probe here never calls a paid API.
"""

from __future__ import annotations

import time

import redis
from flask import Blueprint, Response, jsonify

from api.dispatch import pick_queue
from api.routes.models import model_entry, provider_states
from api.services import services
from common.queueing import ALL_QUEUES, QueueName
from common.registry import Provider

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> tuple[Response, int]:
    svc = services()
    started = time.perf_counter()
    try:
        svc.redis.ping()
        latency_ms = (time.perf_counter() - started) * 1000
        depths = {q: int(svc.redis.llen(q)) for q in ALL_QUEUES}
        workers = svc.workers()
        states = provider_states(svc)
    except redis.RedisError as error:
        body = {
            "status": "down",
            "redis": {"ok": False, "error": type(error).__name__},
            "queues": {},
            "workers": [],
            "providers": {},
            "models": [],
            "cache": {"entries": 0, "hits": 0, "misses": 0, "hit_ratio": 0.0},
        }
        return jsonify(body), 503
    queues = {
        name: {"depth": depth, "workers": sum(name in w.queues for w in workers)}
        for name, depth in depths.items()
    }
    default = svc.registry.get(None)
    serving = queues.get(pick_queue(svc, default), {}).get("workers", 0) > 0
    if default.provider in states:
        serving = serving and states[default.provider]["status"] == "up"
    local_workers = sum(bool({QueueName.CPU, QueueName.GPU} & set(w.queues)) for w in workers)
    local = {"status": "up" if local_workers else "down", "workers": local_workers}
    body = {
        "status": "ok" if serving else "degraded",
        "redis": {"ok": True, "latency_ms": round(latency_ms, 2)},
        "queues": queues,
        "workers": [
            {"name": w.name, "queues": w.queues, "device": w.device, "models": w.models}
            for w in workers
        ],
        "providers": {Provider.LOCAL.value: local, **{p.value: s for p, s in states.items()}},
        "models": [model_entry(svc, spec, states) for spec in svc.registry if spec.enabled],
        "default_model": svc.registry.default,
        "cache": svc.cache.stats(),
    }
    return jsonify(body), 200
