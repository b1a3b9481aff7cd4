"""Result sinks: where a bulk index job's vectors go instead of Redis.

`import common.sinks` stays light: pyarrow, fsspec and psycopg load only when a sink of
their kind is opened or read.
"""

from __future__ import annotations

from common.sinks.batch import JobManifest, Row, Sink, SinkBatch
from common.sinks.config import (
    ParquetSinkConfig,
    PgvectorSinkConfig,
    SinkConfig,
    load_sinks,
    public,
)
from common.sinks.errors import SinkError

__all__ = [
    "JobManifest",
    "ParquetSinkConfig",
    "PgvectorSinkConfig",
    "Row",
    "Sink",
    "SinkBatch",
    "SinkConfig",
    "SinkError",
    "load_sinks",
    "open_sink",
    "public",
]


def open_sink(config: SinkConfig) -> Sink:
    """A writer for the sink; only a pgvector sink imports psycopg."""
    if isinstance(config, PgvectorSinkConfig):
        from common.sinks.pgvector import PgvectorSink

        return PgvectorSink(config)
    from common.sinks.parquet import ParquetSink

    return ParquetSink(config)
