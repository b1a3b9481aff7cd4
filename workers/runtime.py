"""What one worker process holds: settings, Redis, the job store and a batcher per model.

Built once when the worker starts (workers/celery_app.py), before it consumes messages,
so each local model is loaded exactly once per process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from common import presence
from common.cache import EmbeddingCache
from common.index_jobs import IndexJobStore
from common.jobs import JobStore
from common.queueing import QueueName
from common.redis_client import connect, tls_options
from common.registry import ModelSpec, Provider, Registry, load_registry
from common.settings import Settings
from common.sinks import Sink, SinkError, load_sinks, open_sink
from workers.batch_stats import BatchRecorder
from workers.batcher import Batcher
from workers.embedders import Batched, Embedder, Remote
from workers.metrics import BatchHooks
from workers.remote import RemoteModels

log = logging.getLogger(__name__)

PASS_OVERHEAD_TOKENS = {"torch": 48, "onnx": 17, "onnx-int8": 17, "debug": 4096, "cuda": 4096}
"""The fixed cost of one forward pass, in padded tokens (workers/batcher.plan_passes), per
backend. Measured on 2 CPU cores with all-MiniLM-L6-v2: torch costs about 4.5 ms a pass
plus 0.1 ms per padded token (48 tokens), ONNX Runtime about 17 tokens' worth; so passes
are cut where lengths jump. On a GPU launches dominate and padding is nearly free, so
passes stay full (an estimate: no GPU was at hand to measure). The debug backend runs no
pass, so padding costs it nothing and only the number of calls counts: full passes, as
on a GPU, which it stands in for."""


@dataclass
class WorkerRuntime:
    settings: Settings
    registry: Registry
    queues: list[str]
    name: str
    jobs: JobStore = field(init=False)
    index_jobs: IndexJobStore = field(init=False)
    cache: EmbeddingCache = field(init=False)
    device: str = field(init=False, default="cpu")
    batchers: dict[str, Batcher] = field(init=False, default_factory=dict)
    remote: RemoteModels = field(init=False)
    sinks: dict[str, Sink] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _sink_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.redis = connect(self.settings.REDIS_URL, tls=tls_options(self.settings))
        self.jobs = JobStore(self.redis, self.settings.JOB_TTL_SECONDS)
        self.index_jobs = IndexJobStore(self.redis, self.settings.JOB_TTL_SECONDS)
        self.cache = EmbeddingCache(self.redis, self.settings.CACHE_TTL_SECONDS, local_size=0)
        # Remote providers' clients are built on first use: light, no model to load.
        self.remote = RemoteModels(self.settings, self.registry, self.redis)
        self.sink_configs = load_sinks(self.settings.SINKS_FILE)

    def sink(self, name: str) -> Sink:
        """The named sink, opened on first use (SinkError if it is not configured here)."""
        with self._sink_lock:
            if name not in self.sinks:
                config = self.sink_configs.get(name)
                if config is None:
                    raise SinkError(name, "not in this worker's SINKS_FILE")
                self.sinks[name] = open_sink(config)
            return self.sinks[name]

    def receives(self, spec: ModelSpec) -> bool:
        """Whether this worker's queues get the model's tasks ("local": the cpu or gpu queue)."""
        if spec.queue == "local":
            return bool({QueueName.CPU, QueueName.GPU} & set(self.queues))
        return spec.queue in self.queues

    def serves_local(self) -> bool:
        return any(
            spec.enabled and spec.provider is Provider.LOCAL and self.receives(spec)
            for spec in self.registry
        )

    def serves_remote(self) -> bool:
        return QueueName.REMOTE in self.queues

    def load_models(self) -> None:
        """Load every enabled local model this worker's queues can receive; on the remote
        queue, start watching the providers (Ollama's pulled models) instead."""
        if self.serves_remote():
            probe = threading.Thread(
                target=self.remote.probe_forever, args=(threading.Event(),), daemon=True,
                name="provider-probe",
            )  # fmt: skip
            probe.start()
            log.info("remote models: %s", ", ".join(self.remote.served()) or "none configured")
        if not self.serves_local():
            return
        from workers.providers.local import pick_device

        self.device = pick_device(QueueName.GPU in self.queues, self.settings.GPU_ENABLED)
        for spec in self.registry:
            if spec.enabled and spec.provider is Provider.LOCAL and self.receives(spec):
                self.batcher(spec)

    def embedder(self, spec: ModelSpec) -> Embedder:
        """What embeds `spec`'s texts in this worker: its batcher, or its provider."""
        if spec.provider is Provider.LOCAL:
            return Batched(self.batcher(spec))
        return Remote(self.remote, spec)

    def batcher(self, spec: ModelSpec) -> Batcher:
        with self._lock:
            if spec.name not in self.batchers:
                self.batchers[spec.name] = self._build(spec)
            return self.batchers[spec.name]

    def _build(self, spec: ModelSpec) -> Batcher:
        from workers.providers.base import Encoder
        from workers.providers.local import SentenceTransformerEncoder

        backend = spec.backend if self.device == "cpu" or spec.backend == "debug" else "torch"
        if backend != spec.backend:
            log.info("model %s: backend %s is CPU-only, using torch", spec.name, spec.backend)
        elif backend.startswith("onnx") and importlib.util.find_spec("onnxruntime") is None:
            # A GPU image (requirements/worker-gpu.txt) that found no CUDA serves on CPU.
            log.warning("model %s: onnxruntime is not installed, using torch", spec.name)
            backend = "torch"
        encoder: Encoder
        streams = 1
        if backend == "debug":
            from workers.providers.debug import DebugEncoder

            encoder = DebugEncoder(spec)
        elif backend == "torch":
            encoder = SentenceTransformerEncoder(
                spec, self.device, self.settings.GPU_MEMORY_FRACTION
            )
        else:
            from workers.providers.onnx import OnnxEncoder, cpu_threads

            threads = cpu_threads()
            streams = min(self.settings.CPU_STREAMS or threads, threads)
            encoder = OnnxEncoder(spec, self.settings.MODEL_CACHE_DIR, int8=backend == "onnx-int8",
                                  threads=threads // streams)  # fmt: skip
        log.info(
            "loaded model %s on %s with %s (%d dims, %s, %d streams)",
            spec.name,
            self.device,
            backend,
            encoder.dimensions,
            encoder.precision,
            streams,
            extra={"device": self.device, "backend": backend, "precision": encoder.precision},
        )
        recorder = BatchRecorder(self.redis, spec.name)
        hooks = BatchHooks(spec.name, recorder.on_pass, recorder.on_collection)  # + Prometheus
        return Batcher(
            encoder,
            batch_size=spec.batch_size or self.settings.BATCH_SIZE,
            max_tokens=self.settings.MAX_BATCH_TOKENS,
            wait_s=self.settings.BATCH_WAIT_MS / 1000,
            overhead_tokens=PASS_OVERHEAD_TOKENS["cuda" if self.device == "cuda" else backend],
            bulk_tokens=self.settings.BULK_PASS_TOKENS,
            on_pass=hooks.on_pass,
            on_collection=hooks.on_collection,
            streams=streams,
        )

    def info(self) -> presence.WorkerInfo:
        return presence.WorkerInfo(
            name=self.name,
            queues=self.queues,
            device=self.device,
            models=sorted(
                [*self.batchers, *(self.remote.served() if self.serves_remote() else [])]
            ),
            pid=os.getpid(),
        )


_runtime: WorkerRuntime | None = None


def start(settings: Settings, queues: list[str], name: str | None = None) -> WorkerRuntime:
    global _runtime
    _runtime = WorkerRuntime(
        settings, load_registry(settings), sorted(queues), name or socket.gethostname()
    )
    return _runtime


def current() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("worker runtime not started (workers/celery_app.py starts it)")
    return _runtime
