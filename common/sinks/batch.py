"""What a sink takes: one batch of an index job's vectors, and the job's manifest at its end."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from common.index_jobs import IndexJob

Row = tuple[str, int, int, int]
"""(document id, chunk number, start, end) of one vector, in plan order."""


@dataclass(frozen=True)
class SinkBatch:
    job_id: str
    batch: int
    model: str
    rows: list[Row]
    metadata: dict[str, str]
    """Document id -> that document's metadata as JSON text; absent: none."""
    vectors: np.ndarray
    """(len(rows), dimensions) in the order of rows; kept as contiguous float32."""
    written_at: float
    """Unix seconds when the attempt that computed the batch began: a newer attempt wins."""

    def __post_init__(self) -> None:
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.rows):
            raise ValueError(
                f"batch {self.batch}: {len(self.rows)} rows but vectors of shape {vectors.shape}"
            )
        object.__setattr__(self, "vectors", vectors)

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class JobManifest:
    job_id: str
    model: str
    dimensions: int
    chunking: dict[str, int]
    counts: dict[str, int]
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    status: str

    @classmethod
    def from_index_job(cls, job: IndexJob) -> JobManifest:
        return cls(
            job_id=job.id, model=job.model, dimensions=job.dimensions, chunking=job.chunking,
            counts=job.counts, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at, status=str(job.status.value),
        )  # fmt: skip

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


class Sink(Protocol):
    """Writers are shared by a worker's threads: write() may run on many at once."""

    def write(self, batch: SinkBatch) -> None:
        """Store the batch, replacing what an earlier attempt of it stored."""

    def finish(self, job: JobManifest) -> None:
        """The job ended: write its manifest (parquet) or build the index (pgvector)."""

    def close(self) -> None:
        """Release files and connections; the sink is not used afterwards."""
