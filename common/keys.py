"""Every Redis key the service uses is named here."""

from __future__ import annotations

PREFIX = "emb"

WORKERS = f"{PREFIX}:workers"
"""Hash: worker name -> JSON heartbeat (queues, device, models, time)."""


def job(job_id: str) -> str:
    """Hash: a job's state, metadata and (when done) its packed vectors."""
    return f"{PREFIX}:job:{job_id}"


def job_done(job_id: str) -> str:
    """List: gets one element when the job ends; a waiting API request BLPOPs it."""
    return f"{PREFIX}:job:{job_id}:done"


CACHE_GENERATION = f"{PREFIX}:cache:gen"
"""Integer bumped by DELETE /api/v1/cache: part of every cache entry's key."""

CACHE_STATS = f"{PREFIX}:cache:stats"
"""Hash: hits, misses (all API processes)."""


def cache_model_generation(model: str) -> str:
    """Integer bumped by DELETE /api/v1/cache?model=..."""
    return f"{PREFIX}:cache:gen:{model}"


def cache_entry_prefix(global_generation: int, model_generation: int) -> str:
    """String: packed float32 vector, with CACHE_TTL_SECONDS."""
    return f"{PREFIX}:cache:{global_generation}.{model_generation}:"


def batch_stats(model: str) -> str:
    """Hash: counters of the passes and collections the workers formed for a model."""
    return f"{PREFIX}:stats:batches:{model}"
