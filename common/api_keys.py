"""API keys: stored only as SHA-256 hashes in Redis, checked in constant time.

A key reads `emb_<id>_<secret>`. The id is public (it names the key in listings and owns
the jobs made with it); the secret is shown once, at creation, and never stored. Each key
has a role (`admin` manages keys and sees everyone's work; `client` only its own) and
optional limits (KeyLimits). Making the first key sets a marker that revoking keys never
removes: from then on auth stays on, even in open mode (AUTH_REQUIRED=false).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common import redis_keys

PREFIX = "emb_"
Role = Literal["admin", "client"]
ROLES: tuple[Role, ...] = ("admin", "client")

Count = Annotated[int | None, Field(ge=1, le=10**15)]


class KeyLimits(BaseModel):
    """A key's optional settings; None: no limit (the global rate limit still applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: Annotated[str | None, Field(max_length=500, description="Free text.")] = None
    models: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
        Field(min_length=1, max_length=1000, description="The only models it may use."),
    ] = None
    requests_per_minute: Annotated[
        Count, Field(description="In place of RATE_LIMIT_REQUESTS_PER_MINUTE for this key.")
    ] = None
    tokens_per_minute: Annotated[Count, Field(description="Input tokens per UTC minute.")] = None
    tokens_per_day: Annotated[Count, Field(description="Input tokens per UTC day.")] = None
    tokens_per_month: Annotated[Count, Field(description="Input tokens per UTC month.")] = None
    storage_bytes: Annotated[
        Count, Field(description="In place of STORAGE_BYTES_PER_KEY: its files and queued texts.")
    ] = None
    expires_at: Annotated[
        datetime | None,
        Field(description="ISO 8601 (UTC unless it says otherwise) or unix seconds; 401 after."),
    ] = None

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value


class NewKey(KeyLimits):
    """The body of POST /api/v1/keys."""

    name: Annotated[str, Field(min_length=1, max_length=200, description="Who it is for.")]
    role: Role = "client"

    def limits(self) -> KeyLimits:
        return KeyLimits.model_validate(self.model_dump(include=set(LIMIT_FIELDS)))


LIMIT_FIELDS = tuple(KeyLimits.model_fields)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float
    role: Role = "client"
    """Keys made before roles existed are clients."""
    limits: KeyLimits = field(default_factory=KeyLimits)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def expired(self, now: float | None = None) -> bool:
        expires = self.limits.expires_at
        return expires is not None and expires.timestamp() <= (now or time.time())

    def allows(self, model: str) -> bool:
        return self.limits.models is None or model in self.limits.models

    def public(self) -> dict[str, object]:
        """What listings show: everything but the hash."""
        created = datetime.fromtimestamp(self.created_at, UTC).isoformat()
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": created,
                **self.limits.model_dump(mode="json")}  # fmt: skip

    @classmethod
    def from_record(cls, raw: bytes) -> ApiKey:
        record = orjson.loads(raw)
        limits = KeyLimits.model_validate({k: record[k] for k in LIMIT_FIELDS if k in record})
        return cls(record["id"], record["name"], record["created_at"],
                   record.get("role", "client"), limits)  # fmt: skip

    def record(self, digest: str) -> bytes:
        return orjson.dumps({"id": self.id, "name": self.name, "created_at": self.created_at,
                             "role": self.role, "hash": digest,
                             **self.limits.model_dump(mode="json", exclude_none=True)})  # fmt: skip


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(presented: str) -> tuple[str, str] | None:
    """A presented key's (id, secret), or None if it is not shaped like one of ours."""
    if not presented.startswith(PREFIX) or presented.count("_") < 2:
        return None
    key_id, secret = presented[len(PREFIX) :].split("_", 1)
    return key_id, secret


def check(raw: bytes | None, secret: str) -> ApiKey | None:
    """The key whose stored record is `raw`, if `secret` is its secret; constant-time in
    the secret, and as slow for an unknown id as for a wrong secret."""
    expected = orjson.loads(raw)["hash"] if raw else _digest("")
    if not hmac.compare_digest(_digest(secret), expected) or raw is None:
        return None
    return ApiKey.from_record(raw)


class KeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(
        self, name: str, role: Role = "client", limits: KeyLimits | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its full text (shown once; only its hash is kept)."""
        key = ApiKey(secrets.token_hex(6), name, time.time(), role, limits or KeyLimits())
        secret = secrets.token_urlsafe(32)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(redis_keys.API_KEYS, key.id, key.record(_digest(secret)))
            pipe.set(redis_keys.AUTH_ON, 1)
            pipe.execute()
        return key, f"{PREFIX}{key.id}_{secret}"

    def update(self, key_id: str, changes: dict[str, object]) -> ApiKey | None:
        """Set the given limits (None clears one); None if there is no such key. Raises
        pydantic's ValidationError for bad values."""

        def change(pipe: redis.client.Pipeline) -> ApiKey | None:
            raw = pipe.hget(redis_keys.API_KEYS, key_id)
            if raw is None:
                return None
            old = ApiKey.from_record(raw)
            merged = old.limits.model_dump() | changes
            new = ApiKey(old.id, old.name, old.created_at, old.role,
                         KeyLimits.model_validate(merged))  # fmt: skip
            pipe.multi()
            pipe.hset(redis_keys.API_KEYS, key_id, new.record(orjson.loads(raw)["hash"]))
            return new

        return self.redis.transaction(change, redis_keys.API_KEYS, value_from_callable=True)

    def revoke(self, key_id: str) -> bool:
        """The key's calls fail from now on; auth stays on (the marker stays)."""
        return bool(self.redis.hdel(redis_keys.API_KEYS, key_id))

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hget(redis_keys.API_KEYS, key_id)
        return ApiKey.from_record(raw) if raw else None

    def list(self) -> list[ApiKey]:
        found = (ApiKey.from_record(raw) for raw in self.redis.hvals(redis_keys.API_KEYS))
        return sorted(found, key=lambda k: k.created_at)

    def auth_on(self) -> bool:
        """Whether a key was ever made here (keys from before the marker count too)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(redis_keys.AUTH_ON)
            pipe.hlen(redis_keys.API_KEYS)
            marked, count = pipe.execute()
        return bool(marked or count)

    def verify(self, presented: str) -> ApiKey | None:
        """The key, if `presented` is a live one (expired keys included: see expired())."""
        parsed = parse(presented)
        if parsed is None:
            return None
        return check(self.redis.hget(redis_keys.API_KEYS, parsed[0]), parsed[1])
