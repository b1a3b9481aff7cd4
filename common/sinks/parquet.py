"""The parquet sink: one file per batch under <path>/<job_id>/, and _job.json at the end.

Columns: id string, chunk/start/end int32, metadata string (JSON text or null) and
embedding fixed_size_list<float32>[dimensions]; model and dimensions ride in the schema
metadata. A batch is written under a hidden temporary name and renamed into place, so a
redelivered batch replaces its own file and no reader sees half a file; on object stores
(no rename) the final name is PUT at once, which is atomic there. pyarrow, pandas, polars
and DuckDB (`read_parquet('<path>/<job_id>/*.parquet')`) read a job's directory as it is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from common.sinks.batch import JobManifest, Row, SinkBatch
from common.sinks.config import ParquetSinkConfig
from common.sinks.errors import SinkError

if TYPE_CHECKING:
    import pyarrow as pa
    from fsspec import AbstractFileSystem

MANIFEST = "_job.json"
_PART = re.compile(r"part-(\d{6,})\.parquet")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_LOCAL = {"file", "local"}


def part_name(batch: int) -> str:
    return f"part-{batch:06d}.parquet"


class ParquetSink:
    def __init__(self, config: ParquetSinkConfig) -> None:
        self.config = config
        self.fs, self.root = _filesystem(config)

    def write(self, batch: SinkBatch) -> None:
        name = part_name(batch.batch)
        what = f"writing {name.removesuffix('.parquet')} of job {batch.job_id}"
        try:
            _put(self.fs, _job_dir(self.config, self.root, batch.job_id), name, _encode(batch))
        except OSError as error:
            raise _failed(self.config, what, error) from None

    def finish(self, job: JobManifest) -> None:
        directory = _job_dir(self.config, self.root, job.job_id)
        try:
            parts = sorted(part_name(b) for b in _parts(self.fs, directory))
            text = json.dumps({**job.to_dict(), "parts": parts}, indent=2, sort_keys=True)
            _put(self.fs, directory, MANIFEST, text.encode())
        except OSError as error:
            raise _failed(self.config, f"writing {MANIFEST} of job {job.job_id}", error) from None

    def close(self) -> None:
        """Nothing is held between writes."""


def existing_parts(config: ParquetSinkConfig, job_id: str) -> set[int]:
    """The batch numbers whose files are in place."""
    fs, root = _filesystem(config)
    try:
        return _parts(fs, _job_dir(config, root, job_id))
    except OSError as error:
        raise _failed(config, f"listing job {job_id}", error) from None


def read_parts(
    config: ParquetSinkConfig, job_id: str, batches: list[int]
) -> Iterator[tuple[list[Row], dict[str, object | None], np.ndarray]]:
    """Per batch file in place, in the order asked: its rows, each document's metadata
    (parsed JSON, None when none) and its (rows, dimensions) float32 matrix (read-only,
    on the file's decoded buffer)."""
    fs, root = _filesystem(config)
    directory = _job_dir(config, root, job_id)
    for batch in batches:
        name = part_name(batch)
        try:
            table = _read(fs, f"{directory}/{name}")
        except FileNotFoundError:
            continue
        except OSError as error:
            what = f"reading {name.removesuffix('.parquet')} of job {job_id}"
            raise _failed(config, what, error) from None
        yield _decode(table)


def _filesystem(config: ParquetSinkConfig) -> tuple[AbstractFileSystem, str]:
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(os.path.expanduser(config.path))
    except (ImportError, ValueError) as error:  # an unknown protocol, s3fs not installed
        raise SinkError(config.name, f"cannot open {config.path!r}: {error}") from None
    return fs, root.rstrip("/")


def _job_dir(config: ParquetSinkConfig, root: str, job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id) or job_id[0] in "._":
        raise SinkError(config.name, f"job id {job_id[:140]!r} cannot name a directory")
    return f"{root}/{job_id}"


def _is_local(fs: AbstractFileSystem) -> bool:
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & _LOCAL)


def _put(fs: AbstractFileSystem, directory: str, name: str, data: bytes) -> None:
    """Readers never see half a file: a hidden temporary file renamed in place (local), or
    one PUT (object stores)."""
    final = f"{directory}/{name}"
    if not _is_local(fs):
        fs.pipe_file(final, data)
        return
    os.makedirs(directory, exist_ok=True)
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _parts(fs: AbstractFileSystem, directory: str) -> set[int]:
    fs.invalidate_cache(directory)  # object stores' listings are cached per process
    try:
        names = fs.ls(directory, detail=False)
    except FileNotFoundError:
        return set()
    found = (_PART.fullmatch(str(n).rstrip("/").rsplit("/", 1)[-1]) for n in names)
    return {int(m.group(1)) for m in found if m}


def _encode(batch: SinkBatch) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [row[0] for row in batch.rows]
    columns = [
        pa.array(ids, pa.string()),
        *(pa.array([row[i] for row in batch.rows], pa.int32()) for i in (1, 2, 3)),
        pa.array([batch.metadata.get(doc) for doc in ids], pa.string()),
        pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(batch.vectors, dtype=np.float32).ravel()),
            batch.dimensions,
        ),
    ]
    schema = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("chunk", pa.int32(), nullable=False),
            pa.field("start", pa.int32(), nullable=False),
            pa.field("end", pa.int32(), nullable=False),
            pa.field("metadata", pa.string()),
            pa.field("embedding", pa.list_(pa.float32(), batch.dimensions), nullable=False),
        ],
        metadata={
            "model": batch.model, "dimensions": str(batch.dimensions), "job_id": batch.job_id,
            "batch": str(batch.batch), "written_at": repr(batch.written_at),
        },
    )  # fmt: skip
    sink = pa.BufferOutputStream()
    # Dictionaries only where values repeat: on vectors they cost time and a third in size.
    table = pa.Table.from_arrays(columns, schema=schema)
    pq.write_table(table, sink, use_dictionary=["id", "metadata"], compression="zstd")
    return sink.getvalue().to_pybytes()


def _read(fs: AbstractFileSystem, path: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if _is_local(fs):
        return pq.read_table(path)
    return pq.read_table(pa.BufferReader(fs.cat_file(path)))


def _decode(table: pa.Table) -> tuple[list[Row], dict[str, object | None], np.ndarray]:
    import pyarrow as pa

    ids = table.column("id").to_pylist()
    chunk, start, end = (table.column(c).to_pylist() for c in ("chunk", "start", "end"))
    rows = list(zip(ids, chunk, start, end, strict=True))
    metadata: dict[str, object | None] = {}
    for doc, text in zip(ids, table.column("metadata").to_pylist(), strict=True):
        if doc not in metadata:
            metadata[doc] = json.loads(text) if text is not None else None
    embedding = table.column("embedding")
    dims = embedding.type.list_size
    if embedding.num_chunks == 0:
        return rows, metadata, np.empty((0, dims), np.float32)
    vectors = embedding.chunk(0) if embedding.num_chunks == 1 else embedding.combine_chunks()
    assert isinstance(vectors, pa.FixedSizeListArray)
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(-1, dims)
    return rows, metadata, matrix


TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN}
"""Errors worth another try later: a full disk may be cleared, a flaky mount come back."""


def _failed(config: ParquetSinkConfig, what: str, error: OSError) -> SinkError:
    reason = error.strerror or str(error) or type(error).__name__
    retryable = error.errno in TRANSIENT or isinstance(error, TimeoutError | ConnectionError)
    return SinkError(config.name, f"{what} failed: {reason}", retryable=retryable)
