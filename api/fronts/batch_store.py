"""Files and batches of the OpenAI Batch API, kept in Redis with the job TTL.

A batch's output and error files are not stored: their ids name the batch, and their
lines are read from its index job when downloaded (api/fronts/batch_output.py).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import orjson
import redis

from common import redis_keys, storage
from common.errors import NotFound

ResultKind = Literal["output", "error"]


def file_object(
    file_id: str, size: int, created_at: int, expires_at: int, filename: str, purpose: str
) -> dict[str, object]:
    """OpenAI's file object."""
    return {
        "id": file_id, "object": "file", "bytes": size, "created_at": created_at,
        "expires_at": expires_at, "filename": filename, "purpose": purpose,
        "status": "processed", "status_details": None,
    }  # fmt: skip


@dataclass(frozen=True)
class ResultFile:
    """A batch's output or error file."""

    id: str
    batch_id: str
    kind: ResultKind


class FileStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis, self.ttl = client, ttl_seconds

    def create(self, content: bytes, filename: str, purpose: str, owner: str,
               file_id: str) -> dict[str, object]:  # fmt: skip
        now = int(time.time())
        meta = file_object(file_id, len(content), now, now + self.ttl, filename, purpose)
        self._put(file_id, {"meta": orjson.dumps(meta), "content": content, "owner": owner})
        return meta

    def reserve(self, batch_id: str, kind: ResultKind, owner: str) -> str:
        """An id for a batch's output or error file."""
        file_id = new_file_id()
        self._put(file_id, {"batch": batch_id, "kind": kind, "owner": owner})
        return file_id

    def _put(self, file_id: str, fields: dict[str, str | bytes]) -> None:
        key = redis_keys.openai_file(file_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.ttl)
            pipe.execute()

    def result(self, file_id: str, owner: str) -> ResultFile | None:
        """The batch result file the id names; None for an uploaded file."""
        stored_owner, batch, kind = self.redis.hmget(
            redis_keys.openai_file(file_id), ["owner", "batch", "kind"]
        )
        if stored_owner != owner.encode():
            raise NotFound(f"no file {file_id!r}", param="file_id")
        if batch is None:
            return None
        return ResultFile(file_id, batch.decode(), "error" if kind == b"error" else "output")

    def _field(self, file_id: str, name: str, owner: str) -> bytes:
        stored_owner, value = self.redis.hmget(redis_keys.openai_file(file_id), ["owner", name])
        if value is None or stored_owner != owner.encode():
            raise NotFound(f"no file {file_id!r}", param="file_id")
        return value

    def meta(self, file_id: str, owner: str) -> dict[str, object]:
        return orjson.loads(self._field(file_id, "meta", owner))

    def content(self, file_id: str, owner: str) -> bytes:
        return self._field(file_id, "content", owner)

    def delete(self, file_id: str, owner: str) -> None:
        """Delete the file, and release its bytes from the owner's storage."""
        self._field(file_id, "owner", owner)
        self.redis.delete(redis_keys.openai_file(file_id))
        storage.release(self.redis, [storage.owner_bucket(owner)], file_id)


@dataclass(frozen=True)
class BatchRecord:
    """What a batch keeps; its status, counts and result files are its index job's."""

    id: str
    input_file_id: str
    created_at: int
    expires_at: int
    metadata: dict[str, object] | None = None
    errors: dict[str, object] | None = None
    """Why the input file was refused: the batch failed without a job."""
    failed_at: int | None = None
    job_id: str | None = None
    in_progress_at: int | None = None
    cancelling_at: int | None = None
    total: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None


class BatchStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis, self.ttl = client, ttl_seconds

    def save(self, batch: BatchRecord, owner: str) -> None:
        key = redis_keys.openai_batch(batch.id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"meta": orjson.dumps(batch), "owner": owner})
            pipe.expire(key, self.ttl)
            pipe.zadd(redis_keys.openai_batches_of(owner), {batch.id: batch.created_at})
            pipe.expire(redis_keys.openai_batches_of(owner), self.ttl)
            pipe.execute()

    def get(self, batch_id: str, owner: str) -> BatchRecord:
        stored_owner, meta = self.redis.hmget(redis_keys.openai_batch(batch_id), ["owner", "meta"])
        if meta is None or stored_owner != owner.encode():
            raise NotFound(f"no batch {batch_id!r}", param="batch_id")
        known = {field.name for field in dataclasses.fields(BatchRecord)}  # older records too
        return BatchRecord(**{k: v for k, v in orjson.loads(meta).items() if k in known})

    def save_requests(self, batch_id: str, requests: dict[str, bytes]) -> None:
        if requests:
            key = redis_keys.openai_batch_requests(batch_id)
            self.redis.hset(key, mapping=requests)
            self.redis.expire(key, self.ttl)

    def requests(self, batch_id: str, custom_ids: list[str]) -> list[dict]:
        raw = self.redis.hmget(redis_keys.openai_batch_requests(batch_id), custom_ids)
        return [orjson.loads(r) if r else {} for r in raw]

    def list(self, owner: str, limit: int, after: str | None) -> tuple[list[str], bool]:
        """Batch ids, newest first, after the given id; and whether more follow."""
        key = redis_keys.openai_batches_of(owner)
        start = 0
        if after is not None:
            rank = self.redis.zrevrank(key, after)
            if rank is None:
                return [], False
            start = rank + 1
        ids = [m.decode() for m in self.redis.zrevrange(key, start, start + limit)]
        return ids[:limit], len(ids) > limit


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)
