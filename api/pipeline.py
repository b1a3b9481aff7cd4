"""The one embedding pipeline every front uses: validate limits, consult the cache,
queue the misses for a worker, wait, and assemble the vectors in input order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from api.services import Services
from common import errors
from common.jobs import Job, JobStatus
from common.queueing import EMBED_TASK, QueueName
from common.registry import ModelSpec, Provider
from common.schemas import EmbeddingRequest, EmbedOptions, EmbedTask
from common.tokenization import token_lengths
from common.vectors import unpack

CHARS_PER_TOKEN = 4
"""Token estimate for models whose tokenizer the API does not have (remote providers)."""


@dataclass(frozen=True)
class CachePolicy:
    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, cache_control: str | None) -> CachePolicy:
        """`no-store`: neither read nor write; `no-cache`: compute afresh, then store."""
        directives = {d.strip().lower() for d in (cache_control or "").split(",")}
        if "no-store" in directives:
            return cls(read=False, write=False)
        return cls(read="no-cache" not in directives, write=True)


@dataclass(frozen=True)
class Prepared:
    spec: ModelSpec
    texts: list[str]
    tokens: list[int]
    options: EmbedOptions
    encoding_format: str


@dataclass(frozen=True)
class Outcome:
    model: str
    matrix: np.ndarray
    prompt_tokens: int
    cache: str  # hit | miss | partial


def prepare(svc: Services, request: EmbeddingRequest) -> Prepared:
    """Resolve the model and count tokens; refuse over-long texts when truncate is false."""
    spec = svc.registry.get(request.model)
    texts = request.texts
    tokenizer = spec.tokenizer_file()
    if tokenizer is not None:
        lengths = token_lengths(tokenizer, texts)
    else:
        lengths = [len(text) // CHARS_PER_TOKEN + 1 for text in texts]
    if not request.truncate:
        for i, n in enumerate(lengths):
            if n > spec.max_tokens:
                raise errors.InvalidRequest(
                    f"input[{i}] has {n} tokens; {spec.name} takes at most {spec.max_tokens} "
                    "(send truncate: true to cut it)",
                    param=f"input[{i}]",
                )
    tokens = [min(n, spec.max_tokens) for n in lengths]
    return Prepared(spec, texts, tokens, request.options, request.encoding_format)


def pick_queue(svc: Services, spec: ModelSpec) -> str:
    """Local models go to a GPU worker when one is enabled and online, else to the CPU."""
    if spec.provider is not Provider.LOCAL or spec.queue != "local":
        return spec.queue
    if svc.settings.GPU_ENABLED and any(
        QueueName.GPU in w.queues and w.device == "cuda" for w in svc.workers()
    ):
        return QueueName.GPU
    return QueueName.CPU


def submit(svc: Services, prep: Prepared, policy: CachePolicy) -> str:
    """Record the job, then send the task by name (the API never imports workers)."""
    queue = pick_queue(svc, prep.spec)
    options = prep.options.model_dump() | {"encoding_format": prep.encoding_format}
    job_id = svc.jobs.create(prep.spec.name, queue, len(prep.texts), sum(prep.tokens), options)
    keys = svc.cache.keys_for(prep.spec, prep.options, prep.texts) if policy.write else None
    task = EmbedTask(
        job_id=job_id,
        model=prep.spec.name,
        texts=prep.texts,
        tokens=prep.tokens,
        options=prep.options,
        cache_keys=keys,
        cache_read=policy.read,
        cache_ttl_seconds=svc.settings.CACHE_TTL_SECONDS,
    )
    svc.celery.send_task(EMBED_TASK, args=[task.model_dump()], queue=queue)
    return job_id


def finished(svc: Services, job: Job) -> np.ndarray:
    """The vectors of a job that was waited for, or the error that ended it."""
    if job.status is JobStatus.SUCCEEDED:
        return svc.jobs.vectors(job)
    if job.status is JobStatus.FAILED and job.error:
        raise errors.JobFailed.from_job(job.id, job.error)
    if job.status is JobStatus.CANCELLED:
        raise errors.Conflict(f"job {job.id} was cancelled")
    raise errors.Timeout(
        f"not done within {svc.settings.REQUEST_TIMEOUT_SECONDS:g}s; the job goes on: poll it",
        job.id,
    )


def embed_now(svc: Services, prep: Prepared, policy: CachePolicy) -> Outcome:
    """Answer from the cache when every text is there; otherwise run a job and wait."""
    n = len(prep.texts)
    if policy.read:
        keys = svc.cache.keys_for(prep.spec, prep.options, prep.texts)
        found = svc.cache.get_many(keys, count=False)
        hits = sum(value is not None for value in found)
        if hits == n:
            svc.cache.count_hits(n)
            matrix = np.stack([unpack(v, prep.spec.dimensions)[0] for v in found])  # type: ignore[arg-type]
            return Outcome(prep.spec.name, matrix, sum(prep.tokens), "hit")
    else:
        keys, hits = None, 0
    # The worker reads the cache again, counts it, and embeds only the misses: the job
    # then holds the whole answer, even when this wait times out and the client polls.
    job = svc.jobs.wait(submit(svc, prep, policy), svc.settings.REQUEST_TIMEOUT_SECONDS)
    matrix = finished(svc, job)
    if keys is not None and policy.write:
        svc.cache.remember(keys, [row.tobytes() for row in matrix])
    return Outcome(job.model, matrix, job.prompt_tokens, "partial" if hits else "miss")
