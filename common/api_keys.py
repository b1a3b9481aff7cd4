"""API keys: stored only as SHA-256 hashes in Redis, checked in constant time.

A key reads `emb_<id>_<secret>`. The id is public (it names the key in listings and owns
the jobs made with it); the secret is shown once, at creation, and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass

import orjson
import redis

from common import keys

PREFIX = "emb_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key and its full text (shown once; only its hash is kept)."""
        key = ApiKey(id=secrets.token_hex(6), name=name, created_at=time.time())
        secret = secrets.token_urlsafe(32)
        record = asdict(key) | {"hash": _digest(secret)}
        self.redis.hset(keys.API_KEYS, key.id, orjson.dumps(record))
        return key, f"{PREFIX}{key.id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        return bool(self.redis.hdel(keys.API_KEYS, key_id))

    def list(self) -> list[ApiKey]:
        records = (orjson.loads(raw) for raw in self.redis.hvals(keys.API_KEYS))
        return sorted(
            (ApiKey(r["id"], r["name"], r["created_at"]) for r in records),
            key=lambda k: k.created_at,
        )

    def any(self) -> bool:
        return bool(self.redis.hlen(keys.API_KEYS))

    def verify(self, presented: str) -> ApiKey | None:
        """The key, if `presented` is a live one; constant-time in the secret."""
        if not presented.startswith(PREFIX) or presented.count("_") < 2:
            return None
        key_id, secret = presented[len(PREFIX) :].split("_", 1)
        raw = self.redis.hget(keys.API_KEYS, key_id)
        expected = orjson.loads(raw)["hash"] if raw else _digest("")
        if not hmac.compare_digest(_digest(secret), expected) or raw is None:
            return None
        record = orjson.loads(raw)
        return ApiKey(record["id"], record["name"], record["created_at"])
