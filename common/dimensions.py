"""A model's dimensions, in one place: learned from a remote model's first answer (when
the registry leaves them out), checked against what a request asks for, and cut to it.

A smaller `dimensions` is honoured only for models whose registry entry has
`supports_dimensions`: remote ones shorten the vectors themselves (the provider is sent
the figure); local (Matryoshka) vectors are cut here and normalized again.
"""

from __future__ import annotations

import numpy as np
import redis

from common import errors, redis_keys
from common.registry import ModelSpec, Provider
from common.vectors import normalize


def learned(client: redis.Redis, model: str) -> int | None:
    raw = client.get(redis_keys.model_dimensions(model))
    return int(raw) if raw else None


def learn(client: redis.Redis, model: str, dimensions: int, ttl_seconds: int) -> int:
    """Keep the first answer's dimensions (the first writer wins); return what is stored.

    They live as long as cached vectors do (CACHE_TTL_SECONDS), so a model replaced under
    the same name is learned afresh once its old vectors are gone.
    """
    key = redis_keys.model_dimensions(model)
    with client.pipeline(transaction=False) as pipe:
        pipe.set(key, dimensions, nx=True, ex=ttl_seconds)
        pipe.get(key)
        _, stored = pipe.execute()
    return int(stored or dimensions)


def filled_in(client: redis.Redis, spec: ModelSpec) -> ModelSpec:
    """The spec with its learned dimensions filled in, where the registry left them out."""
    if spec.dimensions is not None:
        return spec
    found = learned(client, spec.name)
    return spec.model_copy(update={"dimensions": found}) if found else spec


def known(client: redis.Redis, spec: ModelSpec) -> ModelSpec:
    """The spec with its dimensions, registered or learned; 409 while nobody knows them."""
    spec = filled_in(client, spec)
    if spec.dimensions is None:
        raise errors.Conflict(
            f"the dimensions of {spec.name!r} are not known yet: embed one text with it first, "
            "or give its dimensions in the model registry",
        )
    return spec


def check(spec: ModelSpec, wanted: int | None) -> None:
    """Fewer dimensions only where the model supports them; never more than it has."""
    if wanted is None or wanted == spec.dimensions:
        return
    if not spec.supports_dimensions:
        raise errors.InvalidRequest(
            f"dimensions: {spec.name} does not support choosing dimensions "
            f"(it always gives {spec.dimensions or 'its own number of'})",
            param="dimensions",
        )
    if spec.dimensions is not None and wanted > spec.dimensions:
        raise errors.InvalidRequest(
            f"dimensions: {spec.name} has {spec.dimensions}; ask for at most that",
            param="dimensions",
        )


def as_asked(spec: ModelSpec, wanted: int | None) -> ModelSpec:
    """The spec a worker calls a remote model with: the provider shortens the vectors to
    `wanted` itself; a local model's are cut afterwards (`cut`)."""
    if wanted and spec.provider is not Provider.LOCAL:
        return spec.model_copy(update={"dimensions": wanted})
    return spec


def cut(matrix: np.ndarray, wanted: int | None) -> np.ndarray:
    """Matryoshka: the first `wanted` dimensions, normalized again."""
    if wanted and matrix.shape[1] > wanted:
        return normalize(matrix[:, :wanted])
    return matrix
