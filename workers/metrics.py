"""Prometheus metrics of one worker process, on its own port (WORKER_METRICS_PORT).

What the API cannot see: the batches the batcher really formed (texts per forward pass,
padding, pass time, requests merged), the time a task waited in its queue versus the time
it computed, tokens handled, task errors by reason, and GPU memory and utilization.

A worker runs one process (threads or solo pool), so the default registry is enough.
Scrape each worker (the Kubernetes pod or the port the launcher prints); series carry
the usual `instance` label of the scrape target. GPU figures appear only once CUDA is
initialised in this process; torch is never imported here for them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Task, signals
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.errors import ServiceError
from common.registry import ANY_OLLAMA_PREFIX, Registry
from common.settings import Settings
from workers.batcher import CollectionStats, PassStats

log = logging.getLogger(__name__)

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

BATCH_SIZE = Histogram(
    "embedding_batch_size",
    "Texts per forward pass that the batcher formed (after merging requests and dedup).",
    ["model"],
    buckets=SIZE_BUCKETS,
)
BATCH_PADDING = Histogram(
    "embedding_batch_padding_ratio",
    "Share of a forward pass's padded token slots that were padding (0: none).",
    ["model"],
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
FORWARD_SECONDS = Histogram(
    "embedding_forward_seconds", "Duration of one forward pass.", ["model"],
    buckets=SECONDS_BUCKETS,
)  # fmt: skip
FORWARD_TOKENS = Counter(
    "embedding_forward_tokens",
    "Token slots run through a local model: real (the texts' tokens) and padded (with padding).",
    ["model", "kind"],
)
COLLECTION_REQUESTS = Histogram(
    "embedding_batch_requests",
    "Requests (tasks) merged into one collection by the batcher.",
    ["model"],
    buckets=SIZE_BUCKETS,
)
DUPLICATES = Counter(
    "embedding_batch_duplicate_texts",
    "Texts embedded once for several requests in the same collection (not recomputed).",
    ["model"],
)
QUEUED_SECONDS = Histogram(
    "embedding_task_queued_seconds",
    "Time a task's message waited from the API's send to a worker starting it.",
    ["task", "model", "queue"],
    buckets=SECONDS_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    "embedding_task_compute_seconds",
    "Time a worker spent on a task (cache reads, batching wait, forward pass, writes).",
    ["task", "model", "queue"],
    buckets=SECONDS_BUCKETS,
)
TASKS = Counter(
    "embedding_tasks", "Tasks finished, by outcome (ok or error).",
    ["task", "model", "provider", "outcome"],
)  # fmt: skip
TASK_TOKENS = Counter(
    "embedding_task_tokens",
    "Input tokens of the texts in finished tasks (cached texts included).",
    ["model", "provider"],
)
ERRORS = Counter(
    "embedding_task_errors",
    "Tasks that failed, by model, provider and reason (the error type stored on the job).",
    ["model", "provider", "reason"],
)
WORKER = Gauge(
    "embedding_worker_info", "This worker: name, queues and device (value 1).",
    ["worker", "queues", "device"],
)  # fmt: skip

_registry: Registry | None = None


def _labels(model: str) -> tuple[str, str]:
    """(model label, provider): registry names only, `ollama/*` for ad-hoc Ollama models."""
    if _registry is None:
        return model, ""
    provider = ""
    with contextlib.suppress(ServiceError):
        provider = _registry.get(model).provider.value
    if any(spec.name == model for spec in _registry):
        return model, provider
    return f"{ANY_OLLAMA_PREFIX}*", provider


_started: dict[str, float] = {}
_failed = threading.local()
_installed = False
_gpu_registered = False


# ---------------------------------------------------------------------------- batcher


def observe_pass(model: str, stats: PassStats) -> None:
    BATCH_SIZE.labels(model).observe(stats.texts)
    if stats.padded_tokens:
        BATCH_PADDING.labels(model).observe(1 - stats.tokens / stats.padded_tokens)
    FORWARD_SECONDS.labels(model).observe(stats.seconds)
    FORWARD_TOKENS.labels(model, "real").inc(stats.tokens)
    FORWARD_TOKENS.labels(model, "padded").inc(stats.padded_tokens)


def observe_collection(model: str, stats: CollectionStats) -> None:
    COLLECTION_REQUESTS.labels(model).observe(stats.requests)
    DUPLICATES.labels(model).inc(stats.texts - stats.distinct)


class BatchHooks:
    """The batcher's on_pass/on_collection: Prometheus first, then the next hooks
    (workers/batch_stats.py's Redis figures)."""

    def __init__(
        self,
        model: str,
        on_pass: Callable[[PassStats], None] = lambda _: None,
        on_collection: Callable[[CollectionStats], None] = lambda _: None,
    ) -> None:
        self.model = model
        self._on_pass = on_pass
        self._on_collection = on_collection

    def on_pass(self, stats: PassStats) -> None:
        observe_pass(self.model, stats)
        self._on_pass(stats)

    def on_collection(self, stats: CollectionStats) -> None:
        observe_collection(self.model, stats)
        self._on_collection(stats)


# ---------------------------------------------------------------------------- tasks


def task_failed(model: str, reason: str) -> None:
    """Called by a task that stores a failure (it does not raise: the worker goes on)."""
    ERRORS.labels(*_labels(model), reason).inc()
    _failed.flag = True


def _payload(args: Any) -> dict[str, Any]:
    if args and isinstance(args[0], dict):
        return args[0]
    return {}


def header(task: Task, name: str) -> Any:
    """A custom message header, wherever this Celery version puts it on the request."""
    request = task.request
    value = getattr(request, name, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(name)
    return value


def _queue(task: Task) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    return str(info.get("routing_key") or "")


def _prerun(task_id: str, task: Task, args: Any = None, **_: Any) -> None:
    now = time.time()
    _started[task_id] = time.perf_counter()
    _failed.flag = False
    sent = header(task, "enqueued_at")
    model, _ = _labels(str(_payload(args).get("model", "")))
    if isinstance(sent, int | float):
        QUEUED_SECONDS.labels(task.name, model, _queue(task)).observe(max(0.0, now - sent))


def _postrun(task_id: str, task: Task, args: Any = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    payload = _payload(args)
    model, provider = _labels(str(payload.get("model", "")))
    failed = getattr(_failed, "flag", False)
    _failed.flag = False
    seconds = time.perf_counter() - started if started is not None else None
    if seconds is not None:
        COMPUTE_SECONDS.labels(task.name, model, _queue(task)).observe(seconds)
    TASKS.labels(task.name, model, provider, "error" if failed else "ok").inc()
    tokens = payload.get("tokens")
    if not failed and isinstance(tokens, list):
        TASK_TOKENS.labels(model, provider).inc(sum(t for t in tokens if isinstance(t, int)))
    log.info(
        "task %s %s", task.name, "failed" if failed else "done",
        extra={"task": task.name, "queue": _queue(task), "outcome": "error" if failed else "ok",
               "compute_s": round(seconds, 4) if seconds is not None else None,
               "texts": len(payload.get("texts") or [])},
    )  # fmt: skip


def install() -> None:
    """Connect the task signals (once per process)."""
    global _installed
    if _installed:
        return
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    _installed = True


# ---------------------------------------------------------------------------- GPU


GPU_GAUGES: dict[str, tuple[str, str]] = {
    "total": ("embedding_gpu_memory_total_bytes", "The device's memory."),
    "used": (
        "embedding_gpu_memory_used_bytes",
        "Device memory in use by every process (total minus free).",
    ),
    "reserved": (
        "embedding_gpu_memory_reserved_bytes",
        "Memory held by this process's CUDA caching allocator.",
    ),
    "allocated": ("embedding_gpu_memory_allocated_bytes", "Memory of this process's live tensors."),
    "utilization": (
        "embedding_gpu_utilization_ratio",
        "Share of the last sample period the GPU was busy (needs NVML).",
    ),
}
"""GpuCollector's gauges (name, help), labelled by device. They exist only on a CUDA
worker, so checks of metric names off a GPU read them here."""


class GpuCollector(Collector):
    """GPU memory and utilization of this process's CUDA device, once CUDA is initialised.

    Reads torch only if something else imported it, and never initialises CUDA itself.
    """

    def collect(self) -> Any:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        families = {
            key: GaugeMetricFamily(name, doc, labels=["device"])
            for key, (name, doc) in GPU_GAUGES.items()
        }
        index = torch.cuda.current_device()
        device = f"cuda:{index}"
        try:
            free, total = torch.cuda.mem_get_info(index)
            families["total"].add_metric([device], total)
            families["used"].add_metric([device], total - free)
            families["reserved"].add_metric([device], torch.cuda.memory_reserved(index))
            families["allocated"].add_metric([device], torch.cuda.memory_allocated(index))
        except Exception as error:  # a scrape must never break on a driver hiccup
            log.debug("gpu memory unreadable: %s", error)
        try:
            families["utilization"].add_metric([device], torch.cuda.utilization(index) / 100)
        except Exception as error:  # no NVML (pynvml) in the image: skip utilization
            log.debug("gpu utilization unreadable: %s", error)
        yield from (f for f in families.values() if f.samples)


def serve(
    settings: Settings, registry: Registry, name: str, queues: list[str], device: str
) -> int | None:
    """Start the /metrics server when WORKER_METRICS_PORT is set; returns the port."""
    global _registry, _gpu_registered
    _registry = registry
    WORKER.labels(name, ",".join(sorted(queues)), device).set(1)
    if not _gpu_registered:
        REGISTRY.register(GpuCollector())
        _gpu_registered = True
    port = settings.WORKER_METRICS_PORT
    if not port:
        return None
    # Bound like the API (HOST): all interfaces in a container, loopback if asked.
    start_http_server(port, addr=settings.HOST)
    log.info("worker metrics on %s:%d/metrics", settings.HOST, port, extra={"port": port})
    return port
