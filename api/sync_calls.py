"""Sync calls: answer from the cache when every text is there; otherwise send the work and
wait for it, up to REQUEST_TIMEOUT_SECONDS (or the client's X-Request-Timeout).

Concurrent calls for the same model, queue and options in one API process share one task
(api/gathering.py; while one is in flight the next gathers, up to SYNC_GATHER_MS): one
job record with a member per call (common/jobs.py), one ledger note, one message, one
result write and one waiter, and each call takes its own rows. A call that times out
answers 504 with its member's id, which polls like any job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Hashable
from dataclasses import dataclass, replace

import numpy as np
from flask import Flask, current_app

from api import auth, pipeline, quotas
from api.call import Call
from api.dispatch import send
from api.gathering import Gatherer
from api.pipeline import Outcome, Prepared
from api.services import Services
from common import errors, ledger, logs
from common.jobs import Job, JobStatus, Member, member_ids
from common.queueing import EMBED_TASK
from common.schemas import EmbedTask
from common.storage import Hold
from common.vectors import unpack_rows


@dataclass(frozen=True)
class Pending:
    """One call's part of a task: what it sends, and where its answer goes."""

    prep: Prepared
    call: Call
    queue: str
    hold: Hold | None
    keys: list[str] | None


@dataclass(frozen=True)
class Sent:
    job_id: str
    rows: list[tuple[int, int]]


class SyncCalls:
    """This process's sync calls, gathered into tasks."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        settings = svc.settings
        self.gatherer: Gatherer[Pending, Sent, tuple[Job, np.ndarray | None]] = Gatherer(
            self._send, self._collect, settings.SYNC_GATHER_MS / 1000, settings.MAX_INPUTS
        )

    def _send(self, pending: list[Pending]) -> tuple[list[str], Sent]:
        """One job with a member per call (a lone call: a plain job), one task."""
        svc, first = self.svc, pending[0]
        texts = [t for p in pending for t in p.prep.texts]
        tokens = [n for p in pending for n in p.prep.tokens]
        rows, start = [], 0
        for p in pending:
            rows.append((start, start + len(p.prep.texts)))
            start += len(p.prep.texts)
        members = [Member(p.call.owner, a, b, sum(p.prep.tokens), p.prep.encoding_format)
                   for p, (a, b) in zip(pending, rows, strict=True)]  # fmt: skip
        options = first.prep.options.model_dump() | {"encoding_format": first.prep.encoding_format}
        pipe = svc.redis.pipeline()  # the job, its ledger note and its message, together
        job_id = svc.jobs.create(first.prep.spec.name, first.queue, len(texts), sum(tokens),
                                 options, first.call.owner, members, pipe)  # fmt: skip
        deadlines = [p.call.deadline for p in pending]
        task = EmbedTask(
            job_id=job_id,
            model=first.prep.spec.name,
            texts=texts,
            tokens=tokens,
            options=first.prep.options,
            cache_keys=[k for p in pending for k in p.keys or []] if first.keys else None,
            cache_read=first.call.policy.read,
            cache_ttl_seconds=svc.settings.CACHE_TTL_SECONDS,
            deadline=None if None in deadlines else max(d for d in deadlines if d),
            holds=[p.hold for p in pending if p.hold],
        )
        summary = f"job {job_id}: {len(texts)} texts of {len(pending)} calls"
        send(svc, EMBED_TASK, task, ledger.Note(kind="embed", queue=first.queue, job_id=job_id),
             summary, pipe)  # fmt: skip
        return member_ids(job_id, len(pending)), Sent(job_id, rows)

    def _collect(self, sent: Sent) -> list[tuple[Job, np.ndarray | None]]:
        """Wait for the job as long as any call may; each call's view and rows."""
        wait = self.svc.settings.REQUEST_TIMEOUT_SECONDS
        job, matrix = self.svc.jobs.wait_result(sent.job_id, wait)
        if job.status is not JobStatus.SUCCEEDED:
            matrix = None
        return [(job, None if matrix is None else matrix[a:b]) for a, b in sent.rows]

    def embed(self, prep: Prepared, call: Call) -> Outcome:
        """The call's vectors from the cache, or from a worker."""
        svc, policy = self.svc, call.policy
        n = len(prep.texts)
        keys = pipeline.cache_keys(svc, prep, call) if policy.read or policy.write else None
        hits = 0
        if policy.read and keys is not None:
            found = svc.cache.get_many(keys, count=False)
            hits = sum(value is not None for value in found)
            if hits == n:
                quotas.charge(svc, call.key, prep.spec.name, sum(prep.tokens), hit=True)
                svc.cache.count_hits(n)
                matrix = unpack_rows(found)  # type: ignore[arg-type]
                return Outcome(prep.spec.name, matrix, sum(prep.tokens), "hit")
        # The worker reads the cache again, counts it, and embeds only the misses: the job
        # then holds the whole answer, even when this wait times out and the client polls.
        wait = svc.settings.REQUEST_TIMEOUT_SECONDS
        if call.deadline is not None:
            wait = min(wait, call.deadline - time.time())
        with auth.sync_slot():
            queue, held = pipeline.admit(svc, prep, call)
            pending = Pending(prep, call, queue, held, keys if policy.write else None)
            ticket = self.gatherer.submit(self._gather_key(pending), pending, n)
            logs.bind(job_id=ticket.id)
            done = ticket.done.wait(max(wait, 0.0))
        if not done:
            raise errors.Timeout(
                f"not done within {wait:.2g}s; the job goes on: poll it", ticket.id
            )
        if ticket.error is not None:
            raise ticket.error
        assert ticket.result is not None
        job, rows = ticket.result
        if rows is None:  # failed or cancelled: the error, under this call's id
            pipeline.finished(svc, replace(job, id=ticket.id), wait)
        assert rows is not None
        if keys is not None and policy.write:
            svc.cache.remember(keys, [row.tobytes() for row in rows])
        return Outcome(job.model, rows, sum(prep.tokens), "partial" if hits else "miss")

    @staticmethod
    def _gather_key(pending: Pending) -> Hashable:
        prep, policy = pending.prep, pending.call.policy
        options = json.dumps(prep.options.model_dump(), sort_keys=True)
        return (prep.spec.name, pending.queue, options, policy.read, policy.write)


def embed_now(prep: Prepared, call: Call) -> Outcome:
    sync: SyncCalls = current_app.extensions["embeddings.sync_calls"]
    return sync.embed(prep, call)


def init_app(app: Flask) -> None:
    app.extensions["embeddings.sync_calls"] = SyncCalls(app.extensions["embeddings"])
