"""Prometheus metrics of the API: GET /metrics, and the per-request hook that feeds them.

Under gunicorn every worker process writes its values to PROMETHEUS_MULTIPROC_DIR (set by
api/gunicorn_conf.py before this module is imported) and a scrape sums them all; without
that variable (an app built in-process, as the tests do) the default registry is used.

Figures shared by the whole service are read from Redis at scrape time (RedisCollector):
queue depth, workers online, jobs by state, cache hits and misses, Redis memory and each
remote provider's circuit breaker. They are the same on every API instance: aggregate
them with max(), not sum(), across instances.

Worker-side figures (batch sizes formed, queued vs computing time, tokens embedded, task
errors, GPU memory) come from each worker's own port: workers/metrics.py.

Names: the deployment guide's embedding_requests_total, embedding_duration_seconds and
cache_size; everything else under the `embedding_` prefix. Label values are bounded:
endpoints are URL rules, models are registry names (never what a client typed), reasons
are error types.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Flask, Response, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.services import Services, services
from common import breaker, logs, redis_keys
from common.jobs import ACTIVE, JobStatus
from common.providers import REMOTE
from common.queueing import ALL_QUEUES
from common.registry import ANY_OLLAMA_PREFIX, ModelSpec, Registry

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
"""prometheus_client chose its value store from this variable when it was imported."""

UNCOUNTED = frozenset(
    {
        "/metrics",
        "/livez",
        "/readyz",
        "/health",
        "/openapi.json",
        "/docs",
        "/docs/init.js",
        "/docs/<path:asset>",
    }
)
"""Monitoring and documentation routes: not counted as embedding requests."""

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

REQUESTS = Counter(
    "embedding_requests",
    "API requests by model, provider, endpoint (URL rule) and HTTP status; model and "
    "provider are empty where no model was resolved.",
    ["model", "provider", "endpoint", "status"],
)
DURATION = Histogram(
    "embedding_duration_seconds",
    "Time to answer a request that used a model, from arrival to response (a sync request "
    "includes the queue wait and the forward pass).",
    ["model", "provider", "endpoint"],
    buckets=DURATION_BUCKETS,
)
CACHE_SIZE = Gauge(
    "cache_size",
    "Embeddings held in the in-memory caches of the live API processes (at most CACHE_SIZE each).",
    multiprocess_mode="livesum",
)
ERRORS = Counter(
    "embedding_errors",
    "Error answers by model, provider and reason (the error type, on every front).",
    ["model", "provider", "reason"],
)
TOKENS = Counter(
    "embedding_tokens",
    "Input tokens (after truncation) of successful requests, by model, provider and endpoint.",
    ["model", "provider", "endpoint"],
)
INPUTS = Counter(
    "embedding_inputs",
    "Texts in successful requests, by model, provider and endpoint.",
    ["model", "provider", "endpoint"],
)


def model_label(registry: Registry, name: str) -> str:
    """The registry name, or `ollama/*` for ad-hoc Ollama models: a client cannot create
    new series by inventing model names."""
    return name if any(spec.name == name for spec in registry) else f"{ANY_OLLAMA_PREFIX}*"


def note_model(spec: ModelSpec, tokens: int = 0, texts: int = 0) -> None:
    """Called by the pipeline once a request's model is resolved: labels and log context."""
    logs.bind(model=spec.name, provider=spec.provider.value)
    if has_request_context():
        label = model_label(services().registry, spec.name)
        g.embedding_usage = (label, spec.provider.value, tokens, texts)


def _endpoint() -> str:
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _start() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    endpoint = _endpoint()
    if endpoint in UNCOUNTED:
        return response
    model, provider, tokens, texts = g.get("embedding_usage", ("", "", 0, 0))
    status = response.status_code
    REQUESTS.labels(model, provider, endpoint, str(status)).inc()
    if model:
        started = g.get("metrics_started")
        if started is not None:
            DURATION.labels(model, provider, endpoint).observe(time.perf_counter() - started)
        CACHE_SIZE.set(services().cache.local_entries())
    if status >= 400:
        # Set by the error handler (api/errors.py note_type); bounded: our error types.
        ERRORS.labels(model, provider, g.get("error_type") or f"http_{status}").inc()
    elif model:
        TOKENS.labels(model, provider, endpoint).inc(tokens)
        INPUTS.labels(model, provider, endpoint).inc(texts)
    return response


class RedisCollector(Collector):
    """Service-wide figures read from Redis when Prometheus scrapes (a few cheap calls)."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("embedding_redis_up", "1 when Redis answered this scrape.")
        try:
            with self.svc.redis.pipeline(transaction=False) as pipe:
                self.svc.cache.send_unsent_hits(pipe)  # before the figures are read
                for queue in ALL_QUEUES:
                    pipe.llen(queue)
                pipe.hgetall(redis_keys.JOB_STATS)
                pipe.hgetall(redis_keys.CACHE_STATS)
                pipe.info("memory")
                for provider in REMOTE:
                    breaker.queue_open_check(pipe, provider.value)
                asked = len(ALL_QUEUES) + 3 + len(REMOTE)
                answers = pipe.execute()[-asked:]
            workers = self.svc.workers()
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depths = answers[: len(ALL_QUEUES)]
        jobs, cache, memory = answers[len(ALL_QUEUES) : len(ALL_QUEUES) + 3]
        yield from _redis_memory(memory)
        yield _breakers(answers[len(ALL_QUEUES) + 3 :])

        depth = GaugeMetricFamily(
            "embedding_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        online = GaugeMetricFamily(
            "embedding_workers", "Workers online that consume each queue.", labels=["queue"]
        )
        for queue, n in zip(ALL_QUEUES, depths, strict=True):
            depth.add_metric([queue], int(n))
            online.add_metric([queue], sum(queue in w.queues for w in workers))
        yield depth
        yield online

        stats = {k.decode(): int(v) for k, v in jobs.items()}
        active = GaugeMetricFamily(
            "embedding_jobs", "Jobs now queued or running.", labels=["state"]
        )
        for state in ACTIVE:
            active.add_metric([state.value], max(0, stats.get(state.value, 0)))
        yield active
        created = CounterMetricFamily("embedding_jobs_created", "Jobs created.")
        created.add_metric([], stats.get("created", 0))
        yield created
        finished = CounterMetricFamily(
            "embedding_jobs_finished", "Jobs that ended, by final state.", labels=["state"]
        )
        for state in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            finished.add_metric([state.value], stats.get(f"finished:{state.value}", 0))
        yield finished

        for name in ("hits", "misses"):
            family = CounterMetricFamily(
                f"embedding_cache_{name}",
                f"Texts looked up in the embedding cache that were {name}, by every API "
                "and worker process.",
            )
            family.add_metric([], int(cache.get(name.encode(), 0)))
            yield family

        ages = GaugeMetricFamily(
            "embedding_worker_heartbeat_age_seconds",
            "Seconds since each online worker's last heartbeat.",
            labels=["worker"],
        )
        now = time.time()
        for worker in workers:
            ages.add_metric([worker.name], round(max(0.0, now - worker.seen_at), 3))
        yield ages


def _redis_memory(info: dict[str, Any]) -> Iterator[Metric]:
    used = GaugeMetricFamily("embedding_redis_memory_used_bytes", "Redis used_memory.")
    used.add_metric([], int(info.get("used_memory", 0)))
    yield used
    limit = GaugeMetricFamily(
        "embedding_redis_memory_max_bytes",
        "Redis maxmemory (0: no limit). Past REDIS_MAX_FILL_RATIO of it new work gets 507.",
    )
    limit.add_metric([], int(info.get("maxmemory", 0)))
    yield limit


def _breakers(open_ms: list[int]) -> Metric:
    """From the PTTL of each remote provider's `open` key: positive while it fails fast."""
    family = GaugeMetricFamily(
        "embedding_provider_breaker_open",
        "1 while a provider's circuit breaker is open (calls fail fast), else 0.",
        labels=["provider"],
    )
    for provider, ms in zip(REMOTE, open_ms, strict=True):
        family.add_metric([provider.value], int(ms > 0))
    return family


def _exposition(svc: Services) -> bytes:
    if MULTIPROCESS:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest(REGISTRY)
    shared = CollectorRegistry(auto_describe=False)
    shared.register(RedisCollector(svc))
    return own + generate_latest(shared)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    svc = services()
    CACHE_SIZE.set(svc.cache.local_entries())
    return Response(_exposition(svc), headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_observe)
    app.register_blueprint(bp)
