"""Vectors travel and rest as packed little-endian float32 bytes."""

from __future__ import annotations

import binascii
from collections.abc import Sequence

import numpy as np

DTYPE = np.dtype("<f4")


def pack(matrix: np.ndarray) -> bytes:
    return np.ascontiguousarray(matrix, dtype=DTYPE).tobytes()


def unpack(data: bytes, dimensions: int) -> np.ndarray:
    return np.frombuffer(data, dtype=DTYPE).reshape(-1, dimensions)


def unpack_row(data: bytes) -> np.ndarray:
    """One vector (a cache entry): its length is its dimensions, known or not."""
    return np.frombuffer(data, dtype=DTYPE)


def unpack_rows(rows: Sequence[bytes]) -> np.ndarray:
    """Equal-length vectors (cache entries of one model and options) as one matrix."""
    return unpack(b"".join(rows), len(rows[0]) // DTYPE.itemsize)


def normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def to_base64(vector: np.ndarray) -> str:
    return binascii.b2a_base64(np.ascontiguousarray(vector, dtype=DTYPE), newline=False).decode()
