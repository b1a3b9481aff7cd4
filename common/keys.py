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
