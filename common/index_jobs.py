"""Bulk index jobs in Redis: the plan, the results and progress derived from them.

A job is split into batches of whole documents. Each batch's result is one hash field
written with HSETNX semantics by a Lua script, so a batch that a redelivered task
computes again overwrites instead of adding, and the counters move only the first time a
batch lands. Without a sink the field holds the packed float32 rows in plan order; with
one (common/sinks) the vectors are in the sink and the field is a marker (the batch's
chunk count), and the batch's plan goes once the batch is stored: Redis keeps progress,
not vectors. The job ends when every chunk is stored or failed and the API has finished
reading the upload.

Each attempt at a batch claims it when it starts (`begin`); only the attempt holding the
claim may store or fail it, so a worker that was stopped (SIGSTOP, a partition), given
up for lost and resumed later cannot overwrite the attempt that replaced it.

A cancel settles: no batch starts after it, and the job is `cancelling` while a batch
that had started still holds its claim, then `cancelled`, when its counts and results no
longer change (a redelivered batch of a cancelling job gives its claim up unrun).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from common import redis_keys
from common.errors import JobNotFound
from common.jobs import JobStatus, new_job_id
from common.listing import Listing

PARTS = ("plan", "vectors", "batch_failed", "failed", "metadata", "claims")

# Finishes the job when nothing is left, and a cancelling job when no batch holds a claim.
# Returns {status, 1 if this call finished it (a cancel: 0)}.
_SETTLE = """
local function settle(job, claims, now)
  local f = redis.call('HMGET', job, 'status', 'submitting', 'chunks_total',
                       'chunks_done', 'chunks_failed')
  if f[1] == 'cancelling' and redis.call('HLEN', claims) == 0 then
    redis.call('HSET', job, 'status', 'cancelled', 'finished_at', now)
    return {'cancelled', 0}
  end
  if (f[1] ~= 'queued' and f[1] ~= 'running') or f[2] == '1' then return {f[1], 0} end
  local total, done, failed = tonumber(f[3] or 0), tonumber(f[4] or 0), tonumber(f[5] or 0)
  if done + failed < total then return {f[1], 0} end
  local final = 'succeeded'
  if done == 0 then final = 'failed' end
  redis.call('HSET', job, 'status', final, 'finished_at', now)
  return {final, 1}
end
-- Whether the attempt ARGV[attempt] may write the batch: it holds the claim ('' : any).
local function claimed(claims, batch, attempt)
  return attempt == '' or redis.call('HGET', claims, batch) == attempt
end
"""

# KEYS: job, vectors, batch_failed, claims, plan.
# ARGV: batch, value (packed rows, or a marker), chunks, docs, now, attempt, drop plan.
_STORE = (
    _SETTLE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'status') == 'cancelled' then return {'cancelled', 0} end
if not claimed(KEYS[4], ARGV[1], ARGV[6]) then return {'stale', 0} end
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return settle(KEYS[1], KEYS[4], ARGV[5])
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'chunks_done', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'docs_done', ARGV[4])
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
if ARGV[7] == '1' then redis.call('HDEL', KEYS[5], ARGV[1]) end
return settle(KEYS[1], KEYS[4], ARGV[5])
"""
)

# KEYS: job, vectors, batch_failed, failed, claims.
# ARGV: batch, reason, chunks, now, attempt, doc ids...
_FAIL = (
    _SETTLE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'status') == 'cancelled' then return {'cancelled', 0} end
if not claimed(KEYS[5], ARGV[1], ARGV[5]) then return {'stale', 0} end
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0
   and redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'chunks_failed', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'docs_failed', #ARGV - 5)
  for i = 6, #ARGV do redis.call('HSET', KEYS[4], ARGV[i], ARGV[2]) end
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
return settle(KEYS[1], KEYS[5], ARGV[4])
"""
)

# KEYS: job, claims. ARGV: now. Marks the upload as fully read, then settles.
_SUBMITTED = (
    _SETTLE
    + """
redis.call('HSET', KEYS[1], 'submitting', '0')
return settle(KEYS[1], KEYS[2], ARGV[1])
"""
)

# KEYS: job, claims. ARGV: now. Any active -> cancelling while a batch holds a claim (the
# last one to end settles it), else cancelled.
_CANCEL = (
    _SETTLE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling')
  settle(KEYS[1], KEYS[2], ARGV[1])
end
"""
)

# KEYS: job, claims. ARGV: now, batch, attempt. queued -> running (first batch), and the
# attempt claims the batch; a cancelling job's batch (redelivered: its first attempt is
# given up) drops its claim instead. Returns the status.
_BEGIN = (
    _SETTLE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelling' then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return settle(KEYS[1], KEYS[2], ARGV[1])[1]
end
if status ~= 'queued' and status ~= 'running' then return status end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
return 'running'
"""
)


@dataclass(frozen=True)
class Settled:
    """What a store or a failure left: the job's status, and whether it just ended."""

    status: str
    finished_now: bool

    @classmethod
    def of(cls, reply: list[bytes | int] | None) -> Settled:
        if not reply:
            return cls("expired", False)
        status, now = reply
        return cls(status.decode() if isinstance(status, bytes) else str(status), now == 1)


_COUNTERS = (
    "docs_total", "docs_done", "docs_failed", "chunks_total", "chunks_done", "chunks_failed",
    "batches_total",
)  # fmt: skip


@dataclass(frozen=True)
class IndexJob:
    id: str
    status: JobStatus
    model: str
    queue: str
    owner: str
    submitting: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    dimensions: int
    counts: dict[str, int]
    chunking: dict[str, int]
    sink: str | None = None
    sink_error: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> IndexJob:
        field = {k.decode(): v.decode() for k, v in raw.items()}
        started, finished = field.get("started_at"), field.get("finished_at")
        return cls(
            id=job_id,
            status=JobStatus(field["status"]),
            model=field["model"],
            queue=field["queue"],
            owner=field["owner"],
            submitting=field.get("submitting") == "1",
            created_at=float(field["created_at"]),
            started_at=float(started) if started else None,
            finished_at=float(finished) if finished else None,
            dimensions=int(field["dimensions"]),
            counts={name: int(field.get(name, 0)) for name in _COUNTERS},
            chunking=json.loads(field["chunking"]),
            sink=field.get("sink") or None,
            sink_error=field.get("sink_error") or None,
        )


class IndexJobStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._store = client.register_script(_STORE)
        self._fail = client.register_script(_FAIL)
        self._submitted = client.register_script(_SUBMITTED)
        self._cancel = client.register_script(_CANCEL)
        self._begin = client.register_script(_BEGIN)
        self.listing = Listing(client, redis_keys.index_jobs_of, ttl_seconds, self.get)

    def _part(self, job_id: str, part: str) -> str:
        return redis_keys.index_job_part(job_id, part)

    # The API side: create, plan, finish reading.

    def create(
        self, model: str, queue: str, owner: str, dimensions: int, chunking: dict[str, int],
        sink: str | None = None,
    ) -> str:  # fmt: skip
        job_id = new_job_id()
        now = time.time()
        mapping = {
            "status": JobStatus.QUEUED.value, "model": model, "queue": queue, "owner": owner,
            "dimensions": dimensions, "submitting": "1", "created_at": repr(now),
            "chunking": json.dumps(chunking), "sink": sink or "",
        }  # fmt: skip
        with self.redis.pipeline() as pipe:
            pipe.hset(redis_keys.index_job(job_id), mapping=mapping)
            pipe.expire(redis_keys.index_job(job_id), self.ttl)
            self.listing.add(pipe, owner, job_id, now)
            pipe.execute()
        return job_id

    def add_batch(
        self, job_id: str, batch: int, plan: list[list[object]], metadata: dict[str, str],
        pipe: Pipeline,
    ) -> None:  # fmt: skip
        """Record a batch's plan ([doc id, chunk, start, end] per row) on `pipe`, the one
        that queues the batch (api/dispatch.send)."""
        pipe.hset(self._part(job_id, "plan"), str(batch), json.dumps(plan))
        if metadata:
            pipe.hset(self._part(job_id, "metadata"), mapping=metadata)
        docs = len({row[0] for row in plan})
        for name, amount in (("batches_total", 1), ("chunks_total", len(plan)),
                             ("docs_total", docs)):  # fmt: skip
            pipe.hincrby(redis_keys.index_job(job_id), name, amount)
        for part in ("plan", "metadata"):
            pipe.expire(self._part(job_id, part), self.ttl)

    def add_rejected(self, job_id: str, failures: dict[str, str]) -> None:
        """Documents refused at submission (when the client asked to skip bad ones)."""
        if not failures:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._part(job_id, "failed"), mapping=failures)
            pipe.expire(self._part(job_id, "failed"), self.ttl)
            pipe.hincrby(redis_keys.index_job(job_id), "docs_total", len(failures))
            pipe.hincrby(redis_keys.index_job(job_id), "docs_failed", len(failures))
            pipe.execute()

    def submitted(self, job_id: str) -> Settled:
        claims = [redis_keys.index_job(job_id), self._part(job_id, "claims")]
        return Settled.of(self._submitted(keys=claims, args=[repr(time.time())]))

    def discard(self, job_id: str, owner: str) -> None:
        """Remove a job whose upload was refused."""
        self.redis.delete(redis_keys.index_job(job_id), *(self._part(job_id, p) for p in PARTS))
        self.listing.remove(owner, job_id)

    # The worker side: start, store, fail.

    def begin(self, job_id: str, batch: int, attempt: str) -> JobStatus | None:
        """queued -> running, and `attempt` claims the batch; returns the status now (None
        if the job is gone): the batch runs only if it is `running`. Only the attempt
        holding the claim may store or fail it."""
        status = self._begin(
            keys=[redis_keys.index_job(job_id), self._part(job_id, "claims")],
            args=[repr(time.time()), batch, attempt],
        )
        return JobStatus(status.decode()) if status else None

    def note_sink_error(self, job_id: str, message: str | None) -> None:
        """The sink's last error while its writes are retried (None: it recovered)."""
        if message is None:
            self.redis.hdel(redis_keys.index_job(job_id), "sink_error")
        else:
            self.redis.hset(redis_keys.index_job(job_id), "sink_error", message)

    def holds_claim(self, job_id: str, batch: int, attempt: str) -> bool:
        return self.redis.hget(self._part(job_id, "claims"), str(batch)) == attempt.encode()

    def store_batch(
        self, job_id: str, batch: int, value: bytes, chunks: int, docs: int,
        attempt: str = "", drop_plan: bool = False,
    ) -> Settled:  # fmt: skip
        """Store a batch's packed rows (or, for a sink job, its marker: `drop_plan` then
        removes its plan too). A stale attempt (see `begin`) changes nothing."""
        return Settled.of(self._store(
            keys=[redis_keys.index_job(job_id), self._part(job_id, "vectors"),
                  self._part(job_id, "batch_failed"), self._part(job_id, "claims"),
                  self._part(job_id, "plan")],
            args=[batch, value, chunks, docs, repr(time.time()), attempt, int(drop_plan)],
        ))  # fmt: skip

    def fail_batch(self, job_id: str, batch: int, reason: str, attempt: str = "") -> Settled:
        """The batch's documents fail with `reason` (each once, in plan order)."""
        plan = self.plan(job_id, batch)
        doc_ids = list(dict.fromkeys(str(row[0]) for row in plan))
        return Settled.of(self._fail(
            keys=[redis_keys.index_job(job_id), self._part(job_id, "vectors"),
                  self._part(job_id, "batch_failed"), self._part(job_id, "failed"),
                  self._part(job_id, "claims")],
            args=[batch, reason, len(plan), repr(time.time()), attempt, *doc_ids],
        ))  # fmt: skip

    # Reading.

    def get(self, job_id: str, owner: str | None = None) -> IndexJob:
        raw = self.redis.hgetall(redis_keys.index_job(job_id))
        if not raw or (owner is not None and raw.get(b"owner", b"").decode() != owner):
            raise JobNotFound(job_id)
        return IndexJob.from_hash(job_id, raw)

    def cancel(self, job_id: str) -> None:
        """No batch starts from now on; `cancelling` until the started ones end."""
        self._cancel(
            keys=[redis_keys.index_job(job_id), self._part(job_id, "claims")],
            args=[repr(time.time())],
        )

    def plan(self, job_id: str, batch: int) -> list[list[object]]:
        raw = self.redis.hget(self._part(job_id, "plan"), str(batch))
        return json.loads(raw) if raw else []

    def plans(self, job_id: str, batches: list[int]) -> list[list[list[object]]]:
        if not batches:
            return []
        raw = self.redis.hmget(self._part(job_id, "plan"), [str(b) for b in batches])
        return [json.loads(p) for p in raw if p]

    def stored_batches(self, job_id: str) -> list[int]:
        return sorted(int(b) for b in self.redis.hkeys(self._part(job_id, "vectors")))

    def markers(self, job_id: str, batches: list[int]) -> list[int]:
        """A sink job's stored batches' chunk counts."""
        if not batches:
            return []
        raw = self.redis.hmget(self._part(job_id, "vectors"), [str(b) for b in batches])
        return [int(v or 0) for v in raw]

    def failed_batches(self, job_id: str) -> list[int]:
        return sorted(int(b) for b in self.redis.hkeys(self._part(job_id, "batch_failed")))

    def read_batches(
        self, job_id: str, batches: list[int]
    ) -> list[tuple[list[list[object]], bytes]]:
        if not batches:
            return []
        names = [str(b) for b in batches]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._part(job_id, "plan"), names)
            pipe.hmget(self._part(job_id, "vectors"), names)
            plans, vectors = pipe.execute()
        return [(json.loads(p), v) for p, v in zip(plans, vectors, strict=True) if p and v]

    def metadata(self, job_id: str, doc_ids: list[str]) -> dict[str, object]:
        if not doc_ids:
            return {}
        values = self.redis.hmget(self._part(job_id, "metadata"), doc_ids)
        return {d: json.loads(v) for d, v in zip(doc_ids, values, strict=True) if v}

    def failures(self, job_id: str, limit: int = 100) -> list[dict[str, str]]:
        failed = self._part(job_id, "failed")
        items = self.redis.hscan(failed, count=limit)[1] if limit else {}
        return [{"id": k.decode(), "reason": v.decode()} for k, v in list(items.items())[:limit]]
