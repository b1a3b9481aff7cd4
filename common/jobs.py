"""Job state in Redis: one hash per job, status changes made atomically by a Lua script.

A job is created queued by the API, moved to running and then to succeeded or failed by a
worker, or to cancelled by the client. Terminal states never change again, so a cancelled
job stays cancelled even if a worker finishes its forward pass afterwards.

Concurrent sync calls that the API gathered into one task (api/gathering.py) share one job:
each call is a member, `<job id>.<n>`, that reads as a job of its own (its owner, its rows
of the vectors, its tokens) and may be cancelled alone; the job is cancelled with its last
active member.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, replace
from enum import StrEnum

import numpy as np
import redis
from redis.client import Pipeline

from common import redis_keys, vectors
from common.errors import JobNotFound
from common.listing import Listing

DONE_SIGNAL_TTL_SECONDS = 600
WAIT_SLICE_SECONDS = 2.0


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    """Index jobs only: cancelled while some batches still run (common/index_jobs.py)."""

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)

# KEYS: job hash, done list, job stats (redis_keys.JOB_STATS). ARGV: new status, allowed current
# statuses (comma-separated), done-signal TTL (0: no signal), then field/value pairs to set.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
if not string.find(',' .. ARGV[2] .. ',', ',' .. current .. ',', 1, true) then
  return current
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 4))
if current ~= ARGV[1] and (current == 'queued' or current == 'running') then
  redis.call('HINCRBY', KEYS[3], current, -1)
  if ARGV[1] == 'queued' or ARGV[1] == 'running' then
    redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
  else
    redis.call('HINCRBY', KEYS[3], 'finished:' .. ARGV[1], 1)
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 'ok'
"""


MEMBER_SEP = "."


@dataclass(frozen=True)
class Member:
    """One call's part of a shared job: rows start:end of its vectors."""

    owner: str
    start: int
    end: int
    prompt_tokens: int
    encoding_format: str


def member_ids(job_id: str, count: int) -> list[str]:
    """The ids the members of a job of `count` members answer to (a lone one: the job's)."""
    return [job_id] if count == 1 else [f"{job_id}{MEMBER_SEP}{i}" for i in range(count)]


def new_job_id() -> str:
    """128 random bits, URL-safe: unguessable."""
    return "job_" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    model: str
    queue: str
    count: int
    options: dict[str, object]
    created_at: float
    started_at: float | None
    finished_at: float | None
    dimensions: int | None
    prompt_tokens: int
    error: dict[str, str] | None
    rows: tuple[int, int] | None = None
    """A member's rows of its shared job's vectors."""


def _float(raw: bytes | None) -> float | None:
    return float(raw) if raw else None


class JobStore:
    _FIELDS = (
        "status", "model", "queue", "count", "options", "created_at", "started_at",
        "finished_at", "dimensions", "prompt_tokens", "error", "owner",
    )  # fmt: skip

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._transition = client.register_script(_TRANSITION)
        self.listing = Listing(client, redis_keys.jobs_of, ttl_seconds, self.get)

    def create(
        self, model: str, queue: str, count: int, prompt_tokens: int, options: dict[str, object],
        owner: str, members: list[Member] | None = None, pipe: Pipeline | None = None,
        listed: bool = False,
    ) -> str:  # fmt: skip
        """A queued job; with `members` (more than one), a shared one whose owner is none.
        `listed`: in its owner's list (`listing`; async jobs, not sync calls). With `pipe`,
        its writes go when the caller executes it (one round trip with the task's ledger
        note, api/dispatch.py)."""
        job_id = new_job_id()
        now = time.time()
        mapping = {
            "status": JobStatus.QUEUED.value,
            "owner": owner,
            "model": model,
            "queue": queue,
            "count": count,
            "prompt_tokens": prompt_tokens,
            "options": json.dumps(options),
            "created_at": repr(now),
        }
        if members and len(members) > 1:
            mapping["members"] = json.dumps([astuple(m) for m in members])
            mapping["owner"] = ""
        writes = pipe if pipe is not None else self.redis.pipeline()
        writes.hset(redis_keys.job(job_id), mapping=mapping)
        writes.expire(redis_keys.job(job_id), self.ttl)
        writes.hincrby(redis_keys.JOB_STATS, "created", 1)
        writes.hincrby(redis_keys.JOB_STATS, JobStatus.QUEUED.value, 1)
        if listed:
            self.listing.add(writes, owner, job_id, now)
        if pipe is None:
            writes.execute()
        return job_id

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job (or member); JobNotFound when unknown, expired, or (with `owner`) someone
        else's."""
        key, fields = self._fields(job_id, with_vectors=False)
        return self._parse(job_id, owner, fields, self.redis.hmget(key, fields))[0]

    def _fields(self, job_id: str, with_vectors: bool) -> tuple[str, tuple[str, ...]]:
        """The hash a job (or member) lives in, and the fields that `_parse` reads."""
        shared_id, _, index = job_id.partition(MEMBER_SEP)
        fields = (*self._FIELDS, "members", f"cancelled:{index}")
        return redis_keys.job(shared_id), fields + (("vectors",) if with_vectors else ())

    def _parse(
        self, job_id: str, owner: str | None, fields: tuple[str, ...], values: list[bytes | None]
    ) -> tuple[Job, bytes | None]:
        index = job_id.partition(MEMBER_SEP)[2]
        raw = dict(zip(fields, values, strict=True))
        if raw["status"] is None:
            raise JobNotFound(job_id)
        job = Job(
            id=job_id,
            status=JobStatus(raw["status"].decode()),
            model=raw["model"].decode(),
            queue=raw["queue"].decode(),
            count=int(raw["count"]),
            options=json.loads(raw["options"]),
            created_at=float(raw["created_at"]),
            started_at=_float(raw["started_at"]),
            finished_at=_float(raw["finished_at"]),
            dimensions=int(raw["dimensions"]) if raw["dimensions"] else None,
            prompt_tokens=int(raw["prompt_tokens"]),
            error=json.loads(raw["error"]) if raw["error"] else None,
        )
        job_owner = raw["owner"]
        if index:
            members = json.loads(raw["members"] or "[]")
            if not index.isdigit() or int(index) >= len(members):
                raise JobNotFound(job_id)
            member = Member(*members[int(index)])
            job_owner = member.owner.encode()
            job = replace(
                job,
                status=JobStatus.CANCELLED if raw[f"cancelled:{index}"] else job.status,
                count=member.end - member.start,
                prompt_tokens=member.prompt_tokens,
                options=job.options | {"encoding_format": member.encoding_format},
                rows=(member.start, member.end),
            )
        if owner is not None and job_owner != owner.encode():
            raise JobNotFound(job_id)
        return job, raw.get("vectors")

    def vectors(self, job: Job) -> np.ndarray:
        data = self.redis.hget(redis_keys.job(job.id.partition(MEMBER_SEP)[0]), "vectors")
        if data is None or job.dimensions is None:
            raise JobNotFound(job.id)
        return self._rows(job, data)

    @staticmethod
    def _rows(job: Job, data: bytes) -> np.ndarray:
        assert job.dimensions is not None
        matrix = vectors.unpack(data, job.dimensions)
        return matrix if job.rows is None else matrix[job.rows[0] : job.rows[1]]

    def _move(
        self,
        job_id: str,
        to: JobStatus,
        allowed: tuple[JobStatus, ...],
        signal: bool,
        before: Callable[[Pipeline], object] | None = None,
        **fields: object,
    ) -> bool:
        """`before`: commands to send ahead of the move, in the same round trip."""
        args: list[object] = [to.value, ",".join(s.value for s in allowed)]
        args.append(DONE_SIGNAL_TTL_SECONDS if signal else 0)
        for name, value in fields.items():
            args += [name, value]
        keys = [redis_keys.job(job_id), redis_keys.job_done(job_id), redis_keys.JOB_STATS]
        if before is None:
            return self._transition(keys=keys, args=args) == b"ok"
        with self.redis.pipeline(transaction=False) as pipe:
            before(pipe)
            pipe.eval(_TRANSITION, len(keys), *keys, *args)
            return pipe.execute()[-1] == b"ok"

    def start(self, job_id: str, before: Callable[[Pipeline], object] | None = None) -> bool:
        """queued (or running, when a task is redelivered after a crash) -> running."""
        return self._move(
            job_id, JobStatus.RUNNING, ACTIVE, False, before, started_at=repr(time.time())
        )

    def succeed(self, job_id: str, matrix: np.ndarray) -> bool:
        return self._move(
            job_id, JobStatus.SUCCEEDED, ACTIVE, True,
            vectors=vectors.pack(matrix), dimensions=matrix.shape[1],
            finished_at=repr(time.time()),
        )  # fmt: skip

    def fail(
        self, job_id: str, error_type: str, message: str,
        before: Callable[[Pipeline], object] | None = None,
    ) -> bool:  # fmt: skip
        error = json.dumps({"type": error_type, "message": message})
        return self._move(job_id, JobStatus.FAILED, ACTIVE, True, before, error=error,
                          finished_at=repr(time.time()))  # fmt: skip

    def cancel(self, job_id: str) -> bool:
        """True if the job (or member) was active and is now cancelled. A shared job is
        cancelled with its last active member; until then its work goes on for the others."""
        shared_id, _, index = job_id.partition(MEMBER_SEP)
        if not index:
            return self._move(
                job_id, JobStatus.CANCELLED, ACTIVE, True, finished_at=repr(time.time())
            )
        job = self.get(job_id)
        if job.status not in ACTIVE or not self.redis.hsetnx(
            redis_keys.job(shared_id), f"cancelled:{index}", 1
        ):
            return False
        total = len(json.loads(self.redis.hget(redis_keys.job(shared_id), "members") or "[]"))
        flags = self.redis.hmget(
            redis_keys.job(shared_id), [f"cancelled:{i}" for i in range(total)]
        )
        if all(flags):
            self._move(shared_id, JobStatus.CANCELLED, ACTIVE, True, finished_at=repr(time.time()))
        return True

    def wait_result(self, job_id: str, timeout: float) -> tuple[Job, np.ndarray | None]:
        """Block until the job (or member) ends or `timeout` passes; its latest state and,
        once it succeeded, its vectors. Each wait is one round trip: the read is pipelined
        behind the BLPOP, so Redis answers it the moment the wait ends."""
        key, fields = self._fields(job_id, with_vectors=True)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            with self.redis.pipeline(transaction=False) as pipe:
                if left > 0:  # a slice of 0 would block forever
                    pipe.blpop(
                        [redis_keys.job_done(job_id)],
                        round(max(min(left, WAIT_SLICE_SECONDS), 0.01), 3),
                    )
                pipe.hmget(key, fields)
                values = pipe.execute()[-1]
            # The done signal may have gone to another waiter: the state read says.
            job, data = self._parse(job_id, None, fields, values)
            if job.status.terminal or deadline - time.monotonic() <= 0:
                break
        if data is None or job.dimensions is None:
            return job, None
        return job, self._rows(job, data)
