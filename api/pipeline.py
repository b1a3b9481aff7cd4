"""The one embedding pipeline every front uses: validate limits, consult the cache,
queue the misses for a worker, wait, and assemble the vectors in input order."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flask import g, request

from api import auth, metrics, quotas, storage
from api.services import Services
from common import errors, ledger, logs, providers
from common.breaker import CircuitBreaker
from common.jobs import Job, JobStatus
from common.queueing import EMBED_TASK, QueueName
from common.registry import ModelSpec, Provider
from common.schemas import EmbeddingRequest, EmbedOptions, EmbedTask
from common.storage import text_bytes
from common.tokenization import char_limit, cut_at, token_lengths
from common.vectors import unpack_rows

DEADLINE_HEADER = "X-Request-Timeout"


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
    """Resolve the model (one the caller's key may use) and count tokens; refuse over-long
    texts when truncate is false."""
    spec = svc.registry.get(request.model)
    auth.check_model(spec.name)
    spec = providers.with_dimensions(svc.redis, spec)
    texts = bounded(spec, request.texts, request.truncate)
    lengths = token_lengths(spec.tokenizer_file(), texts)
    if not request.truncate:
        for i, n in enumerate(lengths):
            if n > spec.max_tokens:
                raise errors.InvalidRequest(
                    f"input[{i}] has {n} tokens; {spec.name} takes at most {spec.max_tokens} "
                    "(send truncate: true to cut it)",
                    param=f"input[{i}]",
                )
    check_dimensions(spec, request.dimensions)
    tokens = [min(n, spec.max_tokens) for n in lengths]
    metrics.note_model(spec, sum(tokens), len(texts))
    return Prepared(spec, texts, tokens, request.options, request.encoding_format)


def bounded(spec: ModelSpec, texts: list[str], truncate: bool) -> list[str]:
    """The texts cut where no token the model reads can be (tokenization.char_limit),
    before anything counts their tokens; without truncate, a text past that is refused."""
    limit = char_limit(spec.tokenizer_file(), spec.max_tokens)
    out = list(texts)
    for i, text in enumerate(texts):
        end = cut_at(text, limit)
        if end is None:
            continue
        if not truncate:
            raise errors.InvalidRequest(
                f"input[{i}] has more than {limit} characters besides whitespace, so more "
                f"than {spec.max_tokens} tokens; {spec.name} takes at most {spec.max_tokens} "
                "(send truncate: true to cut it)",
                param=f"input[{i}]",
            )
        out[i] = text[:end]
    return out


def check_dimensions(spec: ModelSpec, wanted: int | None) -> None:
    """Fewer dimensions only where the model supports them; never more than it has."""
    if wanted is None or wanted == spec.dimensions:
        return
    if not spec.supports_dimensions:
        raise errors.InvalidRequest(
            f"dimensions: {spec.name} does not support choosing dimensions "
            f"(it always gives {spec.dimensions or 'its own number of'})",
            param="dimensions",
        )
    if spec.dimensions is not None and wanted > spec.dimensions:
        raise errors.InvalidRequest(
            f"dimensions: {spec.name} has {spec.dimensions}; ask for at most that",
            param="dimensions",
        )


def pick_queue(svc: Services, spec: ModelSpec) -> str:
    """Local models go to a GPU worker when one is enabled and online, else to the CPU."""
    if spec.provider is not Provider.LOCAL or spec.queue != "local":
        return spec.queue
    if svc.settings.GPU_ENABLED and any(
        QueueName.GPU in w.queues and w.device == "cuda" for w in svc.workers()
    ):
        return QueueName.GPU
    return QueueName.CPU


def check_provider(svc: Services, spec: ModelSpec) -> None:
    """Fail fast, queueing nothing, for a remote model whose provider is not configured or
    whose circuit breaker is open (the worker's breaker, read from Redis)."""
    if spec.provider is Provider.LOCAL:
        return
    providers.require_configured(svc.settings, spec)
    breaker = CircuitBreaker(
        svc.redis, spec.provider.value, svc.settings.PROVIDER_BREAKER_FAILURES
    ).state()
    if breaker.state == "open":
        raise breaker.open_error(spec.provider.value)


def known_dimensions(svc: Services, spec: ModelSpec) -> ModelSpec:
    """The spec with its dimensions, registered or learned; 409 while nobody knows them."""
    spec = providers.with_dimensions(svc.redis, spec)
    if spec.dimensions is None:
        raise errors.Conflict(
            f"the dimensions of {spec.name!r} are not known yet: embed one text with it first, "
            "or give its dimensions in the model registry",
        )
    return spec


def check_queue(svc: Services, queue: str) -> None:
    """Refuse new work at once while the queue is deeper than MAX_QUEUE_DEPTH."""
    depth = int(svc.redis.llen(queue))
    if depth > svc.settings.MAX_QUEUE_DEPTH:
        raise errors.QueueFull(
            f"the {queue!r} queue holds {depth} waiting tasks (limit "
            f"{svc.settings.MAX_QUEUE_DEPTH}); retry later or add workers",
            retry_after=5,
        )


def client_deadline() -> float | None:
    """X-Request-Timeout: seconds the client will wait; work still queued then is dropped."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise errors.InvalidRequest(
            f"{DEADLINE_HEADER}: seconds, more than 0 and at most 3600", DEADLINE_HEADER
        )
    return time.time() + seconds


def cache_keys(svc: Services, prep: Prepared) -> list[str]:
    """The texts' cache keys in the caller's scope, at the cache epoch this request read
    (api/auth.py)."""
    epoch, scope = g.get("cache_epoch"), auth.cache_scope()
    return svc.cache.keys_for(prep.spec, prep.options, prep.texts, epoch, scope)


def submit(
    svc: Services, prep: Prepared, policy: CachePolicy, deadline: float | None = None
) -> str:
    """Count it against the caller's quotas, record the job, then send the task by name
    (the API never imports workers)."""
    check_provider(svc, prep.spec)
    queue = pick_queue(svc, prep.spec)
    check_queue(svc, queue)
    quotas.charge(svc, prep.spec.name, sum(prep.tokens))
    held = storage.admit(svc, auth.owner(), text_bytes(prep.texts), "the request's texts",
                         item=storage.new_item())  # fmt: skip
    options = prep.options.model_dump() | {"encoding_format": prep.encoding_format}
    job_id = svc.jobs.create(
        prep.spec.name, queue, len(prep.texts), sum(prep.tokens), options, auth.owner()
    )
    keys = cache_keys(svc, prep) if policy.write else None
    task = EmbedTask(
        job_id=job_id,
        model=prep.spec.name,
        texts=prep.texts,
        tokens=prep.tokens,
        options=prep.options,
        cache_keys=keys,
        cache_read=policy.read,
        cache_ttl_seconds=svc.settings.CACHE_TTL_SECONDS,
        deadline=deadline,
        hold=held,
    )
    logs.bind(job_id=job_id)
    summary = f"job {job_id}: {len(prep.texts)} texts"  # never the texts themselves
    send(svc, EMBED_TASK, task, ledger.Note(kind="embed", queue=queue, job_id=job_id), summary)
    return job_id


def send(svc: Services, name: str, task: EmbedTask, work: ledger.Note, summary: str) -> None:
    """Note the task in the ledger (common/ledger.py), then send it by name to the note's
    queue under the note's task id; `summary` stands in for its arguments in logs."""
    entry = ledger.note(svc.redis, work)
    payload = task.model_copy(update={"ledger": entry}).model_dump()
    svc.celery.send_task(
        name, args=[payload], queue=work.queue, task_id=entry.id, **logs.send_options(summary)
    )


def finished(svc: Services, job: Job, waited: float) -> np.ndarray:
    """The vectors of a job that was waited for `waited` seconds, or the error that ended
    it."""
    if job.status is JobStatus.SUCCEEDED:
        return svc.jobs.vectors(job)
    if job.status is JobStatus.FAILED and job.error:
        raise errors.JobFailed.from_job(job.id, job.error)
    if job.status is JobStatus.CANCELLED:
        raise errors.Conflict(f"job {job.id} was cancelled")
    raise errors.Timeout(
        f"not done within {waited:.3g}s; the job goes on: poll it",
        job.id,
    )


def embed_now(svc: Services, prep: Prepared, policy: CachePolicy) -> Outcome:
    """Answer from the cache when every text is there; otherwise run a job and wait."""
    n = len(prep.texts)
    if policy.read:
        keys = cache_keys(svc, prep)
        found = svc.cache.get_many(keys, count=False)
        hits = sum(value is not None for value in found)
        if hits == n:
            quotas.charge(svc, prep.spec.name, sum(prep.tokens), hit=True)
            svc.cache.count_hits(n)
            matrix = unpack_rows(found)  # type: ignore[arg-type]
            return Outcome(prep.spec.name, matrix, sum(prep.tokens), "hit")
    else:
        keys, hits = None, 0
    # The worker reads the cache again, counts it, and embeds only the misses: the job
    # then holds the whole answer, even when this wait times out and the client polls.
    deadline = client_deadline()
    wait = svc.settings.REQUEST_TIMEOUT_SECONDS
    if deadline is not None:
        wait = min(wait, deadline - time.time())
    with auth.sync_slot():
        job = svc.jobs.wait(submit(svc, prep, policy, deadline), wait)
    matrix = finished(svc, job, wait)
    if keys is not None and policy.write:
        svc.cache.remember(keys, [row.tobytes() for row in matrix])
    return Outcome(job.model, matrix, job.prompt_tokens, "partial" if hits else "miss")
