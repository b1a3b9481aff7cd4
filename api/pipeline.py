"""The one embedding pipeline every front uses: resolve the model, bound and count the
texts, consult the cache, and queue the work for a worker (api/dispatch.py). Sync calls
wait for it in api/sync_calls.py; async jobs are polled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from api import dispatch, metrics, quotas, storage
from api.body import json_body
from api.call import Call, current
from api.services import Services
from common import dimensions, errors, ledger, logs
from common.jobs import Job, JobStatus
from common.queueing import EMBED_TASK
from common.registry import ModelSpec
from common.schemas import EmbeddingRequest, EmbedOptions, EmbedTask, parse_request
from common.storage import Hold, text_bytes
from common.tokenization import char_limit, cut_at, token_lengths


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


def prepare(svc: Services, request: EmbeddingRequest, call: Call) -> Prepared:
    """Resolve the model (one the caller's key may use) and count tokens; refuse over-long
    texts when truncate is false."""
    spec = svc.registry.get(request.model)
    call.check_model(spec.name)
    spec = dimensions.filled_in(svc.redis, spec)
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
    dimensions.check(spec, request.dimensions)
    tokens = [min(n, spec.max_tokens) for n in lengths]
    metrics.note_model(spec, sum(tokens), len(texts))
    return Prepared(spec, texts, tokens, request.options, request.encoding_format)


def prepare_native(svc: Services) -> tuple[Prepared, Call]:
    """The native front's body (POST /api/v1/embeddings, /api/v1/jobs), parsed and
    prepared, with the call it came in."""
    call = current()
    return prepare(svc, parse_request(json_body(), svc.settings.MAX_INPUTS), call), call


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


def cache_keys(svc: Services, prep: Prepared, call: Call) -> list[str]:
    """The texts' cache keys in the caller's scope, at the cache epoch its request read."""
    return svc.cache.keys_for(prep.spec, prep.options, prep.texts, call.cache_epoch, call.scope)


def admit(svc: Services, prep: Prepared, call: Call) -> tuple[str, Hold | None]:
    """Route new work (api/dispatch.py), check its queue and hold its bytes (api/storage.py,
    one round trip), and count it against the caller's quotas; the queue, and the hold
    its task releases."""
    queue = dispatch.route(svc, prep.spec)
    held = storage.admit(svc, call.owner, text_bytes(prep.texts), "the request's texts",
                         key=call.key, item=storage.new_item(), queue=queue)  # fmt: skip
    try:
        quotas.charge(svc, call.key, prep.spec.name, sum(prep.tokens))
    except errors.ServiceError:
        if held is not None:
            storage.release(svc, held)
        raise
    return queue, held


def submit(svc: Services, prep: Prepared, call: Call) -> str:
    """An async job: admit it, record it, and send its task."""
    queue, held = admit(svc, prep, call)
    options = prep.options.model_dump() | {"encoding_format": prep.encoding_format}
    pipe = svc.redis.pipeline()  # the job, its ledger note and its message, together
    job_id = svc.jobs.create(prep.spec.name, queue, len(prep.texts), sum(prep.tokens),
                             options, call.owner, pipe=pipe, listed=True)  # fmt: skip
    task = EmbedTask(
        job_id=job_id,
        model=prep.spec.name,
        texts=prep.texts,
        tokens=prep.tokens,
        options=prep.options,
        cache_keys=cache_keys(svc, prep, call) if call.policy.write else None,
        cache_read=call.policy.read,
        cache_ttl_seconds=svc.settings.CACHE_TTL_SECONDS,
        deadline=call.deadline,
        holds=[held] if held else [],
    )
    logs.bind(job_id=job_id)
    summary = f"job {job_id}: {len(prep.texts)} texts"  # never the texts themselves
    note = ledger.Note(kind="embed", queue=queue, job_id=job_id)
    dispatch.send(svc, EMBED_TASK, task, note, summary, pipe)
    return job_id


def finished(svc: Services, job: Job, waited: float) -> np.ndarray:
    """The vectors of a job that was waited for `waited` seconds, or the error that ended
    it."""
    if job.status is JobStatus.SUCCEEDED:
        return svc.jobs.vectors(job)
    if job.status is JobStatus.FAILED and job.error:
        raise errors.JobFailed.from_job(job.id, job.error)
    if job.status is JobStatus.CANCELLED:
        raise errors.Conflict(f"job {job.id} was cancelled")
    raise errors.Timeout(f"not done within {waited:.3g}s; the job goes on: poll it", job.id)
