"""Files and batches of the OpenAI Batch API, kept in Redis with the job TTL."""

from __future__ import annotations

import secrets
import time

import orjson
import redis

from common import redis_keys, storage
from common.errors import NotFound


class FileStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis, self.ttl = client, ttl_seconds

    def create(
        self, content: bytes, filename: str, purpose: str, owner: str, file_id: str | None = None
    ) -> dict:
        now = int(time.time())
        meta = {
            "id": file_id or new_file_id(), "object": "file", "bytes": len(content),
            "created_at": now, "expires_at": now + self.ttl, "filename": filename,
            "purpose": purpose, "status": "processed", "status_details": None,
        }  # fmt: skip
        key = redis_keys.openai_file(meta["id"])
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"meta": orjson.dumps(meta), "content": content,
                                    "owner": owner})  # fmt: skip
            pipe.expire(key, self.ttl)
            pipe.execute()
        return meta

    def _field(self, file_id: str, name: str, owner: str) -> bytes:
        stored_owner, value = self.redis.hmget(redis_keys.openai_file(file_id), ["owner", name])
        if value is None or stored_owner != owner.encode():
            raise NotFound(f"no file {file_id!r}", param="file_id")
        return value

    def meta(self, file_id: str, owner: str) -> dict:
        return orjson.loads(self._field(file_id, "meta", owner))

    def content(self, file_id: str, owner: str) -> bytes:
        return self._field(file_id, "content", owner)

    def delete(self, file_id: str, owner: str) -> None:
        """Delete the file, and release its bytes from the owner's storage."""
        self.meta(file_id, owner)
        self.redis.delete(redis_keys.openai_file(file_id))
        storage.release(self.redis, [storage.owner_bucket(owner)], file_id)


class BatchStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis, self.ttl = client, ttl_seconds

    def save(self, batch: dict, owner: str) -> None:
        key = redis_keys.openai_batch(batch["id"])
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"meta": orjson.dumps(batch), "owner": owner})
            pipe.expire(key, self.ttl)
            pipe.zadd(redis_keys.openai_batches_of(owner), {batch["id"]: batch["created_at"]})
            pipe.expire(redis_keys.openai_batches_of(owner), self.ttl)
            pipe.execute()

    def get(self, batch_id: str, owner: str) -> dict:
        stored_owner, meta = self.redis.hmget(redis_keys.openai_batch(batch_id), ["owner", "meta"])
        if meta is None or stored_owner != owner.encode():
            raise NotFound(f"no batch {batch_id!r}", param="batch_id")
        return orjson.loads(meta)

    def claim_finalizing(self, batch_id: str) -> bool:
        """One API process builds a batch's output files; the others wait for it."""
        return bool(self.redis.set(self._lock(batch_id), 1, nx=True, ex=600))

    def release_finalizing(self, batch_id: str) -> None:
        self.redis.delete(self._lock(batch_id))

    @staticmethod
    def _lock(batch_id: str) -> str:
        return redis_keys.openai_batch(batch_id) + ":finalizing"

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
