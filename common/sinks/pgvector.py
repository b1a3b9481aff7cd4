"""The pgvector sink: a batch's chunks upserted into one table, one transaction per batch.

A document id is the key: a document written again (a redelivered batch, a later job)
replaces all its chunks, those past its new count included. Each write carries the start
time of the attempt that computed it (`updated_at`), and an older attempt that lands late
changes nothing: in one transaction, under advisory locks on the batch's documents, the
rows older than the batch go, then the batch's rows go in, except for documents that
already hold newer rows. Connections are pooled across a worker's threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from common.sinks.batch import JobManifest, Row, SinkBatch
from common.sinks.config import PgvectorSinkConfig
from common.sinks.errors import SinkError

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 5
MAX_IDLE_CONNECTIONS = 16
HNSW_MAX_DIMENSIONS = 2000
MANY_DOCUMENTS = 256
"""Past this many documents a batch locks the whole table instead of each document."""

_COLUMNS = '(id, chunk, start, "end", metadata, embedding, job_id, model, updated_at)'

# Safe words for connection failures: psycopg's own text names the host and the user.
_HINTS = (
    ("refused", "connection refused"),
    ("timeout", "connection timed out"),
    ("timed out", "connection timed out"),
    ("translate host name", "unknown host"),
    ("name or service not known", "unknown host"),
    ("password", "authentication failed"),
    ("authentication", "authentication failed"),
    ("no such file or directory", "no server at the socket"),
    ("ssl", "SSL failed"),
    ("too many", "too many connections"),
    ("closed the connection", "connection lost"),
    ("terminating connection", "connection lost"),
    ("connection is lost", "connection lost"),
    ("connection is closed", "connection lost"),
)


class PgvectorSink:
    def __init__(self, config: PgvectorSinkConfig) -> None:
        self.config = config
        parts = config.table.split(".")
        self.table = sql.Identifier(*parts)
        index = f"{parts[-1]}_embedding_hnsw"[:63]
        self.index = sql.Identifier(*parts[:-1], index)
        self.index_name = sql.Identifier(index)
        self._table_key = lock_key("table", config.table)
        self._index_key = lock_key("index", config.table)
        self._pool = _Pool(self._connect)
        self._extension_ready = False
        self._checked: set[int] = set()  # dimensions known to match the table
        self._delete = sql.SQL(
            "DELETE FROM {t} WHERE id = ANY(%s::text[]) AND updated_at < to_timestamp(%s)"
        ).format(t=self.table)
        self._insert = sql.SQL(
            "INSERT INTO {t} " + _COLUMNS + " SELECT %s, %s, %s, %s, %s::jsonb, %s, %s, %s,"
            " to_timestamp(%s) WHERE NOT EXISTS"
            " (SELECT 1 FROM {t} WHERE id = %s AND updated_at > to_timestamp(%s))"
            ' ON CONFLICT (id, chunk) DO UPDATE SET start = EXCLUDED.start, "end" = EXCLUDED."end",'
            " metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding,"
            " job_id = EXCLUDED.job_id, model = EXCLUDED.model, updated_at = EXCLUDED.updated_at"
            " WHERE {t}.updated_at <= EXCLUDED.updated_at"
        ).format(t=self.table)

    # The Sink protocol.

    def write(self, batch: SinkBatch) -> None:
        if batch.rows:
            what = f"writing batch {batch.batch} of job {batch.job_id} to table {self.config.table}"
            self._run(what, lambda conn: self._write(conn, batch))

    def finish(self, job: JobManifest) -> None:
        """Build the HNSW cosine index once, if asked and the table has none on embedding.

        CREATE INDEX CONCURRENTLY: other jobs keep writing meanwhile; it can take long on a
        big table (its speed follows the server's maintenance_work_mem)."""
        if self.config.create_index:
            self._run(f"indexing table {self.config.table}", self._create_index)

    def close(self) -> None:
        self._pool.close()

    # The work, on one connection.

    def _write(self, conn: Connection, batch: SinkBatch) -> None:
        self._check_table(conn, batch)
        rows = [(i, batch.rows[i]) for i in last_copies(batch.rows)]
        docs = sorted({row[0] for _, row in rows})
        w, job, model = batch.written_at, batch.job_id, batch.model
        params = [
            (doc, chunk, start, end, batch.metadata.get(doc), batch.vectors[i], job, model, w,
             doc, w)
            for i, (doc, chunk, start, end) in rows
        ]  # fmt: skip
        with conn.transaction(), conn.pipeline():
            if len(docs) > MANY_DOCUMENTS:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._table_key,))
            else:  # sorted keys: writers of shared documents queue instead of deadlocking
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (self._table_key,))
                keys = sorted({lock_key("doc", self.config.table, doc) for doc in docs})
                conn.execute(
                    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k",
                    (keys,),
                )
            conn.execute(self._delete, (docs, w))
            with conn.cursor() as cursor:
                cursor.executemany(self._insert, params)

    def _check_table(self, conn: Connection, batch: SinkBatch) -> None:
        """Create the table for these dimensions, or check that it has them (once)."""
        dims = batch.dimensions
        if dims in self._checked:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._table_key,))
            found = self._dimensions(conn)
            if found is None:
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {t} (id text NOT NULL, chunk int NOT NULL,"
                        ' start int NOT NULL, "end" int NOT NULL, metadata jsonb,'
                        " embedding vector({d}) NOT NULL, job_id text NOT NULL,"
                        " model text NOT NULL, updated_at timestamptz NOT NULL,"
                        " PRIMARY KEY (id, chunk))"
                    ).format(t=self.table, d=sql.Literal(dims))
                )
            elif found not in (dims, -1):
                raise SinkError(
                    self.config.name,
                    f"table {self.config.table} holds vector({found}) embeddings, but model "
                    f"{batch.model} gives {dims} dimensions: name another table",
                )
        self._checked.add(dims)

    def _dimensions(self, conn: Connection) -> int | None:
        """The embedding column's dimensions (-1: any); None when there is no table."""
        name = self.table.as_string(conn)
        if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,):
            return None
        found = conn.execute(
            "SELECT t.typname, a.atttypmod FROM pg_attribute a JOIN pg_type t"
            " ON t.oid = a.atttypid WHERE a.attrelid = to_regclass(%s)"
            " AND a.attname = 'embedding' AND NOT a.attisdropped",
            (name,),
        ).fetchone()
        if found is None or found[0] != "vector":
            raise SinkError(
                self.config.name,
                f"table {self.config.table} exists without a vector column 'embedding'",
            )
        return int(found[1])

    def _has_index(self, conn: Connection) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s)"
                " AND a.attname = 'embedding' AND i.indisvalid",
                (self.table.as_string(conn),),
            ).fetchone()
            is not None
        )

    def _create_index(self, conn: Connection) -> None:
        dims = self._dimensions(conn)
        if dims is None or self._has_index(conn):
            return
        if not 0 < dims <= HNSW_MAX_DIMENSIONS:
            log.warning(
                "sink %r: no HNSW index on %s: vector(%d) (pgvector indexes take 1 to %d)",
                self.config.name, self.config.table, dims, HNSW_MAX_DIMENSIONS,
            )  # fmt: skip
            return
        # A session lock (CONCURRENTLY runs outside a transaction): one builder at a time.
        conn.execute("SELECT pg_advisory_lock(%s)", (self._index_key,))
        try:
            if self._has_index(conn):
                return
            # Under the lock, an index of that name can only be a failed build's leftover.
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {i}").format(i=self.index))
            conn.execute(
                sql.SQL(
                    "CREATE INDEX CONCURRENTLY {n} ON {t} USING hnsw (embedding vector_cosine_ops)"
                ).format(n=self.index_name, t=self.table)
            )
        finally:
            with contextlib.suppress(psycopg.Error):  # a dead session has let go of it
                conn.execute("SELECT pg_advisory_unlock(%s)", (self._index_key,))

    # Connections and errors.

    def _connect(self) -> Connection:
        conn = psycopg.connect(
            self.config.resolve_dsn(),
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name=f"embeddings-sink-{self.config.name}",
        )
        try:
            if not self._extension_ready:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("extension"),))
                    found = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
                    if found.fetchone() is None:
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                self._extension_ready = True
            # A writer frozen inside a transaction (its worker stopped or cut off) would hold
            # its locks, and block every other writer, until its connection dies.
            conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{round(self.config.stalled_seconds * 1000)}ms",),
            )
            register_vector(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, what: str, work: Callable[[Connection], T]) -> T:
        """`work` on a pooled connection, tried again once when a reused connection is found
        dead (the server restarted, the network dropped; the idle ones go too) or the table
        was dropped: every write is one idempotent transaction, so doing it again is safe."""
        for attempt in range(2):
            try:
                conn, reused = self._pool.take()
            except psycopg.Error as error:
                raise self._failed(what, error, connecting=True) from None
            try:
                result = work(conn)
            except SinkError:
                self._pool.give(conn)
                raise
            except psycopg.errors.UndefinedTable as error:
                self._pool.give(conn)
                self._checked.clear()  # dropped behind our back: create it again
                if attempt == 0:
                    continue
                raise self._failed(what, error, connecting=False) from None
            except psycopg.Error as error:
                self._pool.drop(conn)
                if reused and attempt == 0 and (conn.closed or conn.broken):
                    self._pool.clear()
                    continue
                raise self._failed(what, error, connecting=False) from None
            except BaseException:
                self._pool.drop(conn)
                raise
            self._pool.give(conn)
            return result
        raise AssertionError("unreachable")

    def _failed(self, what: str, error: psycopg.Error, *, connecting: bool) -> SinkError:
        reason, retryable = describe(error, connecting=connecting)
        return SinkError(self.config.name, f"{what} failed: {reason}", retryable=retryable)


def describe(error: psycopg.Error, *, connecting: bool) -> tuple[str, bool]:
    """(one safe line, worth retrying): the error's class and what happened; never the
    DSN, host, user or password that psycopg's connection messages carry."""
    name = type(error).__name__
    state = error.sqlstate or ""
    if state and not connecting and state[:2] not in ("08", "28"):
        primary = (error.diag.message_primary or state).splitlines()[0][:200]
        # 25P03: the server ended a session that stalled in its transaction (stalled_seconds)
        return f"{name}: {primary}", state[:2] in ("40", "53", "55", "57", "58") or state == "25P03"
    if state.startswith("28"):
        return f"{name}: authentication failed", False
    if state == "3D000":
        return f"{name}: the database does not exist", False
    text = str(error).lower()
    fallback = "could not connect" if connecting else "connection lost"
    return f"{name}: {next((s for n, s in _HINTS if n in text), fallback)}", True


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key for these names."""
    digest = hashlib.blake2b("\0".join(("embeddings-sink", *parts)).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def last_copies(rows: list[Row]) -> list[int]:
    """Indexes of the rows to store: a document that appears twice keeps its last copy (a
    copy starts where the id changes or its chunk numbers stop rising)."""
    start: dict[str, int] = {}
    previous: Row | None = None
    for i, row in enumerate(rows):
        if previous is None or row[0] != previous[0] or row[1] <= previous[1]:
            start[row[0]] = i
        previous = row
    return [i for i, row in enumerate(rows) if i >= start[row[0]]]


class _Pool:
    """Idle connections shared by threads (last in, first out); one thread at a time
    uses a connection. A broken one is dropped; the next take() opens a new one."""

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> tuple[Connection, bool]:
        """(a connection, whether it was used before)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the sink is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, True
        return self._connect(), False

    def give(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def drop(self, conn: Connection) -> None:
        conn.close()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.clear()
