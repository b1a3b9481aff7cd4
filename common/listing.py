"""An owner's jobs, newest first, a page at a time.

A sorted set per owner holds job ids by creation time, and one more holds everyone's
(`ALL_OWNERS`, for admin keys). Each is written in the job's own creation round trip,
sheds the ids older than the jobs' TTL on every write and lives as long as its newest
job; an id whose job is gone sooner is dropped when a page meets it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import redis
from redis.client import Pipeline

from common.errors import JobNotFound
from common.redis_keys import ALL_OWNERS


class Listed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> float: ...


Item = TypeVar("Item", bound=Listed)
SCAN_EXTRA = 50
"""Ids read past a page's size, so that expired ones rarely cost a second read."""


class Listing(Generic[Item]):
    def __init__(
        self, client: redis.Redis, key_of: Callable[[str], str], ttl_seconds: int,
        load: Callable[[str], Item],
    ) -> None:  # fmt: skip
        """`load(id)`: the item, or JobNotFound once it has expired."""
        self.redis, self.key_of, self.ttl, self.load = client, key_of, ttl_seconds, load

    def add(self, pipe: Pipeline, owner: str, job_id: str, created_at: float) -> None:
        for listed in (owner, ALL_OWNERS):
            key = self.key_of(listed)
            pipe.zadd(key, {job_id: created_at})
            pipe.zremrangebyscore(key, "-inf", created_at - self.ttl)
            pipe.expire(key, self.ttl)

    def remove(self, owner: str, job_id: str) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for listed in (owner, ALL_OWNERS):
                pipe.zrem(self.key_of(listed), job_id)
            pipe.execute()

    def page(self, owner: str, limit: int, after: tuple[float, str] | None) -> list[Item]:
        """Up to `limit` of the owner's items (ALL_OWNERS: everyone's), newest first,
        starting after the (created_at, id) cursor."""
        key = self.key_of(owner)
        top = f"{after[0]!r}" if after else "+inf"
        rows = self.redis.zrevrangebyscore(key, top, "-inf", start=0, num=limit + SCAN_EXTRA,
                                           withscores=True)  # fmt: skip
        items: list[Item] = []
        for member, score in rows:
            job_id = member.decode()
            if after and score == after[0] and job_id >= after[1]:
                continue
            try:
                items.append(self.load(job_id))
            except JobNotFound:
                self.redis.zrem(key, job_id)  # expired
            if len(items) == limit:
                break
        return items
