"""Streaming an index job's results: NDJSON lines, or a NumPy .npy / .npz download.

Order is stable (batch number, then plan order within a batch), so a client can resume
an interrupted download from the cursor: the batch number to continue at. The rows come
from Redis, or from the job's parquet sink; a pgvector sink is queried in SQL instead.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from api.services import Services
from common.errors import Conflict
from common.index_jobs import IndexJob, IndexJobStore
from common.sinks import ParquetSinkConfig, PgvectorSinkConfig, Row, SinkError
from common.vectors import unpack

READ_BATCHES = 16
"""Batches fetched from Redis per round trip while streaming."""

Window = tuple[list[Row], dict[str, object], np.ndarray]
"""Some batches' rows, their documents' metadata, and their vectors, in plan order."""


@dataclass(frozen=True)
class RedisSource:
    store: IndexJobStore
    job_id: str
    dims: int

    def windows(self, batches: list[int]) -> Iterator[Window]:
        for i in range(0, len(batches), READ_BATCHES):
            read = self.store.read_batches(self.job_id, batches[i : i + READ_BATCHES])
            if not read:
                continue
            rows: list[Row] = [tuple(row) for plan, _ in read for row in plan]  # type: ignore[misc]
            matrix = np.concatenate([unpack(packed, self.dims) for _, packed in read])
            doc_ids = list(dict.fromkeys(str(row[0]) for row in rows))
            yield rows, self.store.metadata(self.job_id, doc_ids), matrix

    def row_count(self, batches: list[int]) -> int:
        return sum(len(plan) for plan in self.store.plans(self.job_id, batches))


@dataclass(frozen=True)
class ParquetSource:
    config: ParquetSinkConfig
    store: IndexJobStore
    job_id: str
    dims: int

    def windows(self, batches: list[int]) -> Iterator[Window]:
        from common.sinks.parquet import read_parts

        yield from read_parts(self.config, self.job_id, batches)  # type: ignore[misc]

    def row_count(self, batches: list[int]) -> int:
        return sum(self.store.markers(self.job_id, batches))


Source = RedisSource | ParquetSource


def source(svc: Services, job: IndexJob) -> Source:
    """Where the job's rows are read from; 409 for a sink that is queried, not streamed."""
    if job.sink is None:
        return RedisSource(svc.index_jobs, job.id, job.dimensions)
    config = svc.sinks.get(job.sink)
    if isinstance(config, PgvectorSinkConfig):
        raise Conflict(
            f"job {job.id} wrote its vectors to the pgvector sink {job.sink!r} (table "
            f"{config.table}): query them there",
        )
    if config is None:
        raise SinkError(job.sink, "no longer configured in this API's SINKS_FILE")
    return ParquetSource(config, svc.index_jobs, job.id, job.dimensions)


def ndjson(rows_of: Source, batches: list[int]) -> Iterator[bytes]:
    for rows, meta, matrix in rows_of.windows(batches):
        lines = []
        for (doc_id, chunk, start, end), vector in zip(rows, matrix, strict=True):
            line = {"id": doc_id, "chunk": chunk, "start": start, "end": end,
                    "metadata": meta.get(str(doc_id)), "embedding": vector}  # fmt: skip
            lines.append(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY))
        yield b"\n".join(lines) + b"\n"


def npy(rows_of: Source, batches: list[int]) -> Iterator[bytes]:
    """A (rows, dims) float32 .npy, streamed: the header first, then each batch's bytes."""
    header = io.BytesIO()
    shape = (rows_of.row_count(batches), rows_of.dims)
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    yield header.getvalue()
    for _, _, matrix in rows_of.windows(batches):
        yield np.ascontiguousarray(matrix, dtype="<f4").tobytes()


def npz(rows_of: Source, batches: list[int]) -> io.BytesIO:
    """embeddings, ids, chunks, starts, ends in one .npz (built in memory)."""
    ids: list[str] = []
    positions: list[tuple[int, int, int]] = []
    vectors: list[np.ndarray] = []
    for rows, _, matrix in rows_of.windows(batches):
        for doc_id, chunk, start, end in rows:
            ids.append(str(doc_id))
            positions.append((int(chunk), int(start), int(end)))
        vectors.append(matrix)
    table = np.array(positions, dtype=np.int64).reshape(-1, 3)
    out = io.BytesIO()
    np.savez(
        out,
        embeddings=np.concatenate([np.zeros((0, rows_of.dims), "<f4"), *vectors]).astype("<f4"),
        ids=np.array(ids, dtype=str),
        chunks=table[:, 0], starts=table[:, 1], ends=table[:, 2],
    )  # fmt: skip
    out.seek(0)
    return out
