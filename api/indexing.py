"""Turning a validated upload into an index job: chunk, plan batches, queue them.

Batches go to the bulk lane of the model's queue (common/queueing.bulk_lane), which
workers serve after interactive work. A job with a sink sends each batch's plan and
metadata along with its texts, so Redis keeps only what progress needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

import orjson

from api import metrics, quotas, storage
from api.call import CachePolicy, Call
from api.dispatch import route, send
from api.services import Services
from api.uploads import Upload
from common import chunking, dimensions, ledger, logs
from common.cache import entry_keys
from common.errors import InvalidRequest
from common.queueing import INDEX_BATCH_TASK, bulk_lane, send_index_finish
from common.registry import ModelSpec
from common.schemas import EmbedOptions, IndexBatchTask, IndexJobOptions
from common.sinks import SinkConfig
from common.storage import text_bytes

CHUNKING_DOCS = 256
"""Documents the tokenizer chunks in one call."""


@dataclass(frozen=True)
class Piece:
    """One text to embed in a job, and where it came from."""

    text: str
    tokens: int
    index: int
    start: int
    end: int


@dataclass
class _Batch:
    texts: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    plan: list[list[object]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    docs: int = 0


def _limits(spec: ModelSpec, upload: Upload) -> tuple[int, int]:
    wanted = upload.options.chunking
    max_tokens = wanted.max_tokens or spec.max_tokens
    if max_tokens > spec.max_tokens:
        raise InvalidRequest(
            f"chunking.max_tokens: {spec.name} takes at most {spec.max_tokens} tokens",
            param="chunking.max_tokens",
        )
    if wanted.overlap_tokens >= max_tokens // 2:
        raise InvalidRequest(
            "chunking.overlap_tokens: must be less than half of max_tokens",
            param="chunking.overlap_tokens",
        )
    return max_tokens, wanted.overlap_tokens


class Planner:
    """Groups whole documents into batches of about INDEX_BATCH_CHUNKS chunks and queues them."""

    def __init__(
        self, svc: Services, spec: ModelSpec, job_id: str, queue: str, call: Call,
        options: EmbedOptions, sink: str | None = None,
    ) -> None:  # fmt: skip
        self.svc, self.spec, self.job_id, self.queue = svc, spec, job_id, queue
        self.call, self.owner, self.policy = call, call.owner, call.policy
        self.options, self.sink = options, sink
        self.scope = call.scope
        self.generations = svc.cache.generations(spec.name, scope=self.scope)
        self.number = 0
        self.tokens = 0
        self.batch = _Batch()

    def add(self, doc_id: str, pieces: list[Piece], metadata: dict | None = None) -> None:
        """One document's pieces (its chunks, or a batch request's inputs), kept together."""
        for piece in pieces:
            self.batch.texts.append(piece.text)
            self.batch.tokens.append(min(piece.tokens, self.spec.max_tokens))
            self.tokens += self.batch.tokens[-1]
            self.batch.plan.append([doc_id, piece.index, piece.start, piece.end])
        if metadata:
            self.batch.metadata[doc_id] = orjson.dumps(metadata).decode()
        self.batch.docs += 1
        if len(self.batch.texts) >= self.svc.settings.INDEX_BATCH_CHUNKS:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, _Batch()
        if not batch.texts:
            return
        store = self.svc.index_jobs
        in_redis = {} if self.sink else batch.metadata  # a sink job's travels with the task
        pipe = self.svc.redis.pipeline()  # the plan, the note and the message, together
        store.add_batch(self.job_id, self.number, batch.plan, in_redis, pipe)
        keys = (
            entry_keys(self.spec, self.options, batch.texts, self.generations, self.scope)
            if self.policy.write
            else None
        )
        held = storage.admit(self.svc, self.owner, text_bytes(batch.texts), "a batch",
                             item=f"{self.job_id}:{self.number}", checked=False)  # fmt: skip
        task = IndexBatchTask(
            job_id=self.job_id, batch=self.number, docs=batch.docs, model=self.spec.name,
            texts=batch.texts, tokens=batch.tokens, options=self.options, cache_keys=keys,
            cache_read=self.policy.read, cache_ttl_seconds=self.svc.settings.CACHE_TTL_SECONDS,
            sink=self.sink, rows=batch.plan if self.sink else None,
            metadata=batch.metadata if self.sink else None, holds=[held] if held else [],
        )  # fmt: skip
        work = ledger.Note(
            kind="index_batch", queue=bulk_lane(self.queue), job_id=self.job_id,
            batch=self.number,
        )  # fmt: skip
        summary = f"index job {self.job_id} batch {self.number}: {len(batch.texts)} chunks"
        send(self.svc, INDEX_BATCH_TASK, task, work, summary, pipe)
        self.number += 1


def check_sink(svc: Services, name: str | None) -> SinkConfig | None:
    """The sink a client named; 400 listing the configured names if there is none."""
    if name is None:
        return None
    if name not in svc.sinks:
        configured = ", ".join(sorted(svc.sinks)) or "none (the operator sets SINKS_FILE)"
        raise InvalidRequest(f"sink: no sink named {name!r}; configured: {configured}", "sink")
    return svc.sinks[name]


def cache_policy(options: IndexJobOptions, cache_control: str | None) -> CachePolicy:
    """Index jobs read the cache but do not fill it, unless the client asks: `cache`
    ("write", "off"), or a Cache-Control header, which wins."""
    if cache_control:
        return CachePolicy.from_header(cache_control)
    return CachePolicy(read=options.cache != "off", write=options.cache == "write")


def start_job(
    svc: Services, model: str | None, call: Call, chunking_info: dict[str, int],
    options: EmbedOptions, sink: str | None = None, *, size: int,
) -> Planner:  # fmt: skip
    """Create the job and a planner that queues its batches (with the call's cache policy);
    call `finish` after the last. Refused (403, 429) for a model outside the caller's key's
    list or a spent quota."""
    check_sink(svc, sink)
    spec = svc.registry.get(model)
    call.check_model(spec.name)
    quotas.charge(svc, call.key, spec.name, 1, mode="check")
    spec = dimensions.known(svc.redis, spec)
    metrics.note_model(spec)
    queue = route(svc, spec)
    storage.admit(svc, call.owner, size, "the upload", key=call.key, queue=bulk_lane(queue))
    job_id = svc.index_jobs.create(spec.name, queue, call.owner, spec.dimensions,  # type: ignore[arg-type]
                                   chunking_info, sink)  # fmt: skip
    logs.bind(job_id=job_id)
    return Planner(svc, spec, job_id, queue, call, options, sink)


def finish(planner: Planner) -> str:
    """Queue the last batch, count the job's tokens against the caller's key, and mark
    the upload read; a sink job that ended before that (every batch already done) is
    closed here."""
    planner.flush()
    quotas.charge(planner.svc, planner.call.key, planner.spec.name, planner.tokens, mode="record")
    settled = planner.svc.index_jobs.submitted(planner.job_id)
    if settled.finished_now and planner.sink:
        send_index_finish(planner.svc.celery, planner.job_id, planner.queue)
    return planner.job_id


def submit(svc: Services, upload: Upload, call: Call, cache_control: str | None) -> str:
    spec = svc.registry.get(upload.options.model)
    max_tokens, overlap = _limits(spec, upload)
    options = EmbedOptions(normalize=upload.options.normalize)
    chunking_info = {"max_tokens": max_tokens, "overlap_tokens": overlap}
    call = call.with_policy(cache_policy(upload.options, cache_control))
    planner = start_job(svc, spec.name, call, chunking_info, options, upload.options.sink,
                        size=upload.size)  # fmt: skip
    svc.index_jobs.add_rejected(planner.job_id, upload.rejected)
    tokenizer = spec.tokenizer_file()
    documents = upload.documents()
    while docs := list(islice(documents, CHUNKING_DOCS)):
        texts = [doc.text for doc in docs]
        for doc, chunks in zip(docs, chunking.split_many(tokenizer, texts, max_tokens, overlap),
                               strict=True):  # fmt: skip
            pieces = [Piece(doc.text[c.start : c.end], c.tokens, c.index, c.start, c.end)
                      for c in chunks]  # fmt: skip
            planner.add(str(doc.id), pieces, doc.metadata)
    return finish(planner)
