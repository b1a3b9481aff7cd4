"""Streaming an index job's results: NDJSON lines, or a NumPy .npy / .npz download.

Order is stable (batch number, then plan order within a batch), so a client can resume
an interrupted download from the cursor: the batch number to continue at.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import orjson

from common.index_jobs import IndexJobStore
from common.vectors import unpack

READ_BATCHES = 16
"""Batches fetched from Redis per round trip while streaming."""

Rows = list[tuple[list[object], np.ndarray]]


def _chunks(store: IndexJobStore, job_id: str, batches: list[int], dims: int) -> Iterator[Rows]:
    for i in range(0, len(batches), READ_BATCHES):
        window = store.read_batches(job_id, batches[i : i + READ_BATCHES])
        yield [(row, vec) for plan, packed in window
               for row, vec in zip(plan, unpack(packed, dims), strict=True)]  # fmt: skip


def ndjson(store: IndexJobStore, job_id: str, batches: list[int], dims: int) -> Iterator[bytes]:
    for rows in _chunks(store, job_id, batches, dims):
        meta = store.metadata(job_id, list(dict.fromkeys(str(r[0]) for r, _ in rows)))
        lines = []
        for (doc_id, chunk, start, end), vector in rows:
            line = {"id": doc_id, "chunk": chunk, "start": start, "end": end,
                    "metadata": meta.get(str(doc_id)), "embedding": vector}  # fmt: skip
            lines.append(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY))
        yield b"\n".join(lines) + b"\n"


def npy(store: IndexJobStore, job_id: str, batches: list[int], dims: int) -> Iterator[bytes]:
    """A (rows, dims) float32 .npy, streamed: the header first, then each batch's bytes."""
    rows = sum(len(p) for p in store.plans(job_id, batches))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (rows, dims)}
    )
    yield header.getvalue()
    for i in range(0, len(batches), READ_BATCHES):
        for _, packed in store.read_batches(job_id, batches[i : i + READ_BATCHES]):
            yield packed


def npz(store: IndexJobStore, job_id: str, batches: list[int], dims: int) -> io.BytesIO:
    """embeddings, ids, chunks, starts, ends in one .npz (built in memory)."""
    ids: list[str] = []
    positions: list[tuple[int, int, int]] = []
    vectors: list[np.ndarray] = []
    for rows in _chunks(store, job_id, batches, dims):
        for (doc_id, chunk, start, end), vector in rows:
            ids.append(str(doc_id))
            positions.append((int(chunk), int(start), int(end)))  # type: ignore[call-overload]
            vectors.append(vector)
    table = np.array(positions, dtype=np.int64).reshape(-1, 3)
    out = io.BytesIO()
    np.savez(
        out,
        embeddings=np.array(vectors, dtype="<f4").reshape(-1, dims),
        ids=np.array(ids, dtype=str),
        chunks=table[:, 0], starts=table[:, 1], ends=table[:, 2],
    )  # fmt: skip
    out.seek(0)
    return out
