"""Result sinks against the real libraries: pyarrow files read back by pyarrow, pandas and
DuckDB, and a real PostgreSQL with pgvector (pgserver's, or TEST_PG_URL)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from common.index_jobs import IndexJob
from common.jobs import JobStatus
from common.settings import SettingsError
from common.sinks import (
    JobManifest,
    ParquetSinkConfig,
    PgvectorSinkConfig,
    SinkBatch,
    SinkError,
    load_sinks,
    open_sink,
    public,
)
from common.sinks.parquet import ParquetSink, existing_parts, read_parts
from common.sinks.pgvector import PgvectorSink, last_copies, lock_key
from tests.pg import pg_url, server_dir  # noqa: F401  (pg_url: the fixture)

ROOT = Path(__file__).resolve().parent.parent
SECRET_DSN = "postgresql://bob:hunter2@db.internal:5432/vectors"
JOB = "job_test-1"
DIMS = 8


def make_batch(
    docs: dict[str, int], *, batch: int = 0, written_at: float = 1000.0, seed: int = 0,
    job_id: str = JOB, dims: int = DIMS, metadata: dict[str, object] | None = None,
) -> SinkBatch:  # fmt: skip
    """`docs`: document id -> its number of chunks."""
    rows = [(doc, i, i * 10, i * 10 + 9) for doc, n in docs.items() for i in range(n)]
    vectors = np.random.default_rng(seed).standard_normal((len(rows), dims), dtype=np.float32)
    meta = {doc: json.dumps(m) for doc, m in (metadata or {}).items()}
    return SinkBatch(job_id, batch, "test-model", rows, meta, vectors, written_at)


def manifest(job_id: str = JOB) -> JobManifest:
    return JobManifest(
        job_id=job_id, model="test-model", dimensions=DIMS, chunking={"max_tokens": 256},
        counts={"chunks_done": 5}, created_at=1.0, started_at=2.0, finished_at=3.0,
        status="succeeded",
    )  # fmt: skip


# Configuration.


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sinks.toml"
    path.write_text(text)
    return path


def test_a_good_file_names_both_kinds(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        f"""
[sinks.files]
kind = "parquet"
path = "{tmp_path / "vectors"}"
[sinks.pg]
kind = "pgvector"
dsn = "{SECRET_DSN}"
table = "public.chunks"
[sinks.pg-env]
kind = "pgvector"
dsn_env = "SINK_TEST_DSN"
table = "chunks"
create_index = false
""",
    )
    sinks = load_sinks(path)
    assert sinks["files"] == ParquetSinkConfig("files", str(tmp_path / "vectors"))
    pg = sinks["pg"]
    assert isinstance(pg, PgvectorSinkConfig)
    assert (pg.kind, pg.table, pg.create_index, pg.resolve_dsn()) == (
        "pgvector", "public.chunks", True, SECRET_DSN,
    )  # fmt: skip
    assert not sinks["pg-env"].create_index  # type: ignore[union-attr]
    assert public(sinks) == [
        {"name": "files", "kind": "parquet"},
        {"name": "pg", "kind": "pgvector"},
        {"name": "pg-env", "kind": "pgvector"},
    ]
    for shown in (repr(pg), str(pg), repr(sinks), json.dumps(public(sinks))):
        assert "hunter2" not in shown and "db.internal" not in shown
    assert load_sinks(None) == {}


def test_dsn_env_is_read_at_use_time(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PgvectorSinkConfig("pg", "chunks", dsn_env="SINK_TEST_DSN")
    monkeypatch.delenv("SINK_TEST_DSN", raising=False)
    with pytest.raises(SinkError, match="SINK_TEST_DSN is not set") as caught:
        config.resolve_dsn()
    assert caught.value.type == "sink_error" and caught.value.sink == "pg"
    monkeypatch.setenv("SINK_TEST_DSN", SECRET_DSN)
    assert config.resolve_dsn() == SECRET_DSN
    assert "hunter2" not in repr(config)


BAD_FILES = [
    ("[sinks", None, "Expected"),
    ('[sinks.x]\nkind = "kafka"', "sinks.x", "unknown kind 'kafka'"),
    ('[sinks.x]\nkind = "parquet"', "sinks.x", "path is required"),
    ('[sinks.x]\nkind = "parquet"\npath = "/d"\ntable = "t"', "sinks.x", "unknown key 'table'"),
    ('[sinks.x]\nkind = "parquet"\npath = "data/v"', "sinks.x", "must be absolute"),
    (f'[sinks.x]\nkind = "pgvector"\ndsn = "{SECRET_DSN}"', "sinks.x", "table is required"),
    (
        f'[sinks.x]\nkind = "pgvector"\ntable = "t"\ndsn = "{SECRET_DSN}"\ndsn_env = "E"',
        "sinks.x",
        "exactly one of dsn and dsn_env",
    ),
    ('[sinks.x]\nkind = "pgvector"\ntable = "t"', "sinks.x", "exactly one of dsn and dsn_env"),
    (
        f'[sinks.x]\nkind = "pgvector"\ntable = "t; drop table u"\ndsn = "{SECRET_DSN}"',
        "sinks.x",
        "is not a plain SQL name",
    ),
    (
        f'[sinks.x]\nkind = "pgvector"\ntable = "a.b.c"\ndsn = "{SECRET_DSN}"',
        "sinks.x",
        "is not a plain SQL name",
    ),
    (
        f'[sinks.x]\nkind = "pgvector"\ntable = "t"\ndsn = "{SECRET_DSN}"\ncreate_index = "yes"',
        "sinks.x",
        "create_index must be true or false",
    ),
    (
        f'[sinks.x]\nkind = "pgvector"\ntable = "t"\ndsn = "{SECRET_DSN}"\nstalled_seconds = 0',
        "sinks.x",
        "stalled_seconds must be a number of seconds",
    ),
    ('[sinks."bad name!"]\nkind = "parquet"\npath = "/d"', "'bad name!'", "a sink name is"),
    ('[sink.x]\nkind = "parquet"\npath = "/d"', None, "unknown key 'sink'"),
]


@pytest.mark.parametrize(("text", "sink", "why"), BAD_FILES)
def test_a_bad_file_stops_in_one_line(
    tmp_path: Path, text: str, sink: str | None, why: str
) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_sinks(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting SINKS_FILE={str(path)!r}: ")
    assert why in message
    if sink:
        assert sink in message
    assert "hunter2" not in message and "db.internal" not in message


def test_a_missing_file_stops_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="No such file"):
        load_sinks(tmp_path / "nowhere.toml")


def test_import_stays_light() -> None:
    code = (
        "import sys, common.sinks, common.sinks.parquet\n"
        "print(sorted(m for m in ('pyarrow', 'fsspec', 'psycopg') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_manifest_from_an_index_job() -> None:
    job = IndexJob(
        id=JOB, status=JobStatus.SUCCEEDED, model="test-model", queue="cpu", owner="o",
        submitting=False, created_at=1.0, started_at=2.0, finished_at=None, dimensions=DIMS,
        counts={"chunks_done": 5}, chunking={"max_tokens": 256},
    )  # fmt: skip
    made = JobManifest.from_index_job(job)
    assert made == replace(manifest(), finished_at=None)
    assert json.loads(made.to_json())["status"] == "succeeded"


# Parquet.


@pytest.fixture
def files(tmp_path: Path) -> ParquetSinkConfig:
    return ParquetSinkConfig("files", str(tmp_path / "vectors"))


def test_parquet_one_file_per_batch_and_a_redelivered_batch_replaces_its_own(
    files: ParquetSinkConfig,
) -> None:
    sink = open_sink(files)
    assert isinstance(sink, ParquetSink)
    sink.write(make_batch({"a": 2, "b": 1}, batch=0))
    sink.write(make_batch({"c": 3}, batch=1, seed=1))
    again = make_batch({"c": 3}, batch=1, seed=2, written_at=2000.0)
    sink.write(again)
    job_dir = Path(files.path) / JOB
    assert sorted(p.name for p in job_dir.iterdir()) == [
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    table = pq.read_table(job_dir / "part-000001.parquet")
    assert table.column("id").to_pylist() == ["c", "c", "c"]
    assert table.column("chunk").to_pylist() == [0, 1, 2]
    stored = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(stored, again.vectors)
    assert existing_parts(files, JOB) == {0, 1}
    assert existing_parts(files, "job_none") == set()
    sink.close()


def test_parquet_columns_and_types_are_exact(files: ParquetSinkConfig) -> None:
    ParquetSink(files).write(make_batch({"a": 2}, metadata={"a": {"lang": "en"}}))
    table = pq.read_table(Path(files.path) / JOB / "part-000000.parquet")
    schema = table.schema
    assert schema.names == ["id", "chunk", "start", "end", "metadata", "embedding"]
    assert [schema.field(n).type for n in schema.names] == [
        pa.string(), pa.int32(), pa.int32(), pa.int32(), pa.string(),
        pa.list_(pa.float32(), DIMS),
    ]  # fmt: skip
    assert schema.metadata[b"model"] == b"test-model"
    assert schema.metadata[b"dimensions"] == str(DIMS).encode()
    assert table.column("start").to_pylist() == [0, 10]
    assert table.column("end").to_pylist() == [9, 19]
    assert [json.loads(m) for m in table.column("metadata").to_pylist()] == [{"lang": "en"}] * 2


def test_parquet_directory_reads_as_it_is(files: ParquetSinkConfig) -> None:
    sink = ParquetSink(files)
    first = make_batch({"a": 2, "b": 1}, batch=0, metadata={"a": {"n": 1}})
    sink.write(first)
    sink.write(make_batch({"c": 3}, batch=1, seed=1))
    sink.finish(manifest())
    job_dir = Path(files.path) / JOB
    (job_dir / ".part-000002.parquet.deadbeef.tmp").write_bytes(b"half a fi")  # a crash's
    assert ds.dataset(job_dir).to_table().num_rows == 6

    import duckdb

    glob = f"{job_dir}/*.parquet"
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(6,)]
    query = np.asarray(first.vectors[0], dtype=np.float32).tolist()
    best = con.execute(
        f"SELECT id, chunk FROM read_parquet('{glob}') "
        f"ORDER BY list_cosine_similarity(embedding, {query}::FLOAT[]) DESC LIMIT 1"
    ).fetchall()
    assert best == [("a", 0)]
    con.close()


def test_pandas_reads_the_directory(files: ParquetSinkConfig) -> None:
    pandas = pytest.importorskip("pandas")
    ParquetSink(files).write(make_batch({"a": 2, "b": 1}))
    frame = pandas.read_parquet(Path(files.path) / JOB)
    assert len(frame) == 3 and list(frame.columns)[:2] == ["id", "chunk"]


def test_parquet_manifest_lists_the_job_and_its_parts(files: ParquetSinkConfig) -> None:
    sink = ParquetSink(files)
    sink.write(make_batch({"a": 1}, batch=0))
    sink.write(make_batch({"b": 1}, batch=3))
    sink.finish(manifest())
    written = json.loads((Path(files.path) / JOB / "_job.json").read_text())
    assert written["parts"] == ["part-000000.parquet", "part-000003.parquet"]
    assert (written["model"], written["dimensions"], written["status"]) == (
        "test-model", DIMS, "succeeded",
    )  # fmt: skip
    assert written["counts"] == {"chunks_done": 5} and written["finished_at"] == 3.0


def test_read_parts_gives_back_what_was_written(files: ParquetSinkConfig) -> None:
    sink = ParquetSink(files)
    batches = [
        make_batch({"a": 2, "b": 1}, batch=0, metadata={"a": {"k": [1, 2]}}),
        make_batch({"c": 1}, batch=2, seed=5),
    ]
    for batch in batches:
        sink.write(batch)
    got = list(read_parts(files, JOB, [2, 1, 0]))  # 1 is not there: skipped
    assert [rows for rows, _, _ in got] == [batches[1].rows, batches[0].rows]
    assert got[1][1] == {"a": {"k": [1, 2]}, "b": None}
    for (_, _, matrix), batch in zip(got, batches[::-1], strict=True):
        assert matrix.dtype == np.float32 and matrix.shape == batch.vectors.shape
        np.testing.assert_array_equal(matrix, batch.vectors)


def test_parquet_unwritable_path_is_a_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "vectors"
    blocker.write_text("a file where the directory should be")
    sink = ParquetSink(ParquetSinkConfig("files", str(blocker)))
    with pytest.raises(SinkError) as caught:
        sink.write(make_batch({"a": 1}, batch=3))
    assert re.fullmatch(
        rf"sink 'files': writing part-000003 of job {JOB} failed: \S.*", str(caught.value)
    )
    with pytest.raises(SinkError, match="listing job"):
        existing_parts(ParquetSinkConfig("files", str(blocker / "x")), JOB)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_parquet_read_only_directory_is_a_sink_error(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    with pytest.raises(SinkError, match="Permission denied"):
        ParquetSink(ParquetSinkConfig("files", str(root))).write(make_batch({"a": 1}))


def test_parquet_job_id_cannot_leave_the_directory(files: ParquetSinkConfig) -> None:
    with pytest.raises(SinkError, match="cannot name a directory"):
        list(read_parts(files, "../etc", [0]))


# pgvector.


@pytest.fixture
def table(pg_url: str, request: pytest.FixtureRequest) -> str:  # noqa: F811
    name = ("t_" + re.sub(r"\W", "_", request.node.name).lower())[:63]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    return name


@pytest.fixture
def pg_sink(pg_url: str, table: str) -> Iterator[PgvectorSink]:  # noqa: F811
    sink = open_sink(PgvectorSinkConfig("pg", table, dsn=pg_url))
    assert isinstance(sink, PgvectorSink)
    yield sink
    sink.close()


def rows_of(url: str, table: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        query = sql.SQL(
            'SELECT id, chunk, start, "end", metadata, embedding::text, job_id, model,'
            " extract(epoch FROM updated_at)::float8 FROM {} ORDER BY id, chunk"
        ).format(sql.Identifier(table))
        return conn.execute(query).fetchall()


def vectors_of(url: str, table: str) -> dict[tuple[str, int], np.ndarray]:
    return {
        (row[0], row[1]): np.array(json.loads(str(row[5])), dtype=np.float32)
        for row in rows_of(url, table)
    }


def test_pgvector_rows_land(pg_sink: PgvectorSink, pg_url: str, table: str) -> None:  # noqa: F811
    batch = make_batch({"a": 2, "b": 1}, metadata={"a": {"lang": "en"}}, written_at=1234.5)
    pg_sink.write(batch)
    rows = rows_of(pg_url, table)
    assert [r[:5] for r in rows] == [
        ("a", 0, 0, 9, {"lang": "en"}), ("a", 1, 10, 19, {"lang": "en"}), ("b", 0, 0, 9, None),
    ]  # fmt: skip
    assert {r[6:] for r in rows} == {(JOB, "test-model", 1234.5)}
    stored = vectors_of(pg_url, table)
    for i, row in enumerate(batch.rows):
        np.testing.assert_allclose(stored[row[0], row[1]], batch.vectors[i], rtol=1e-6)


def test_pgvector_redelivered_batch_adds_no_duplicates(
    pg_sink: PgvectorSink,
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    batch = make_batch({"a": 2, "b": 1})
    pg_sink.write(batch)
    pg_sink.write(batch)
    retry = make_batch({"a": 2, "b": 1}, seed=3, written_at=batch.written_at + 60)
    pg_sink.write(retry)
    stored = vectors_of(pg_url, table)
    assert sorted(stored) == [("a", 0), ("a", 1), ("b", 0)]
    np.testing.assert_allclose(stored["b", 0], retry.vectors[2], rtol=1e-6)


def test_pgvector_reindexed_document_drops_its_extra_chunks(
    pg_sink: PgvectorSink,
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    pg_sink.write(make_batch({"a": 3, "b": 2}, written_at=100.0))
    newer = make_batch({"a": 1}, written_at=200.0, seed=1, job_id="job_second")
    pg_sink.write(newer)
    rows = rows_of(pg_url, table)
    assert [(r[0], r[1], r[6]) for r in rows] == [
        ("a", 0, "job_second"), ("b", 0, JOB), ("b", 1, JOB),
    ]  # fmt: skip


def test_pgvector_late_older_write_changes_nothing(
    pg_sink: PgvectorSink,
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    newer = make_batch({"a": 1}, written_at=200.0, seed=1)
    pg_sink.write(newer)
    before = rows_of(pg_url, table)
    pg_sink.write(make_batch({"a": 3, "c": 1}, written_at=100.0, seed=2))  # an old attempt
    after = rows_of(pg_url, table)
    assert [r for r in after if r[0] == "a"] == before
    assert [r[0] for r in after] == ["a", "c"]  # a new document of the old attempt lands


def test_pgvector_concurrent_writers_keep_the_newest_attempt(
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    sink = PgvectorSink(PgvectorSinkConfig("pg", table, dsn=pg_url))
    rng = np.random.default_rng(7)
    writes = [
        make_batch(
            {d: int(rng.integers(1, 5)) for d in ("a", "b", "c")}, seed=i, written_at=100.0 + i
        )
        for i in range(24)
    ]
    order = rng.permutation(len(writes))
    errors: list[BaseException] = []

    def run(part: list[int]) -> None:
        try:
            for i in part:
                sink.write(writes[i])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(list(order[k::8]),)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    assert not errors
    newest = writes[-1]
    stored = vectors_of(pg_url, table)
    assert sorted(stored) == sorted((r[0], r[1]) for r in newest.rows)
    for i, row in enumerate(newest.rows):
        np.testing.assert_allclose(stored[row[0], row[1]], newest.vectors[i], rtol=1e-6)


def test_pgvector_a_writer_frozen_in_its_transaction_blocks_the_others_only_a_while(
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    """A worker frozen (SIGSTOP, a paused VM) inside a write's transaction holds the table's
    lock; Postgres ends its session after `stalled_seconds`, and the others' writes go on
    instead of waiting for it to wake."""
    config = PgvectorSinkConfig("pg", table, dsn=pg_url, stalled_seconds=1)
    frozen, live = PgvectorSink(config), PgvectorSink(config)
    live.write(make_batch({"a": 1}, seed=1, written_at=100.0))
    holding = threading.Event()
    ended: list[BaseException] = []

    def freeze(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("table", table),))
            holding.set()
            time.sleep(4)  # frozen: the transaction open, nothing sent
            conn.execute("SELECT 1")

    def run_frozen() -> None:
        try:
            frozen._run("a frozen write", freeze)
        except SinkError as error:
            ended.append(error)

    thread = threading.Thread(target=run_frozen)
    thread.start()
    assert holding.wait(10)
    started = time.monotonic()
    live.write(make_batch({"a": 1}, seed=2, written_at=200.0))
    waited = time.monotonic() - started
    thread.join()
    frozen.close()
    live.close()
    assert 0.5 < waited < 3.5, waited  # blocked, then freed at ~1 s, not at the thaw (4 s)
    assert len(ended) == 1 and "idle-in-transaction" in str(ended[0])
    assert ended[0].retryable  # on a new connection, should it still hold its claim


def test_pgvector_a_document_twice_in_a_batch_keeps_its_last_copy() -> None:
    rows = [("a", 0, 0, 1), ("a", 1, 1, 2), ("b", 0, 0, 1), ("a", 0, 0, 1), ("a", 0, 0, 5)]
    assert last_copies(rows) == [2, 4]


def test_pgvector_dimension_mismatch_is_a_sink_error(
    pg_sink: PgvectorSink,
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    pg_sink.write(make_batch({"a": 1}))
    other = PgvectorSink(PgvectorSinkConfig("pg", table, dsn=pg_url))
    with pytest.raises(SinkError, match=rf"table {table} holds vector\(8\) embeddings"):
        other.write(make_batch({"a": 1}, dims=4))
    other.close()


def test_pgvector_finish_builds_the_hnsw_index_once(
    pg_sink: PgvectorSink,
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    pg_sink.finish(manifest())  # no table yet: nothing to index
    pg_sink.write(make_batch({"a": 3, "b": 2}))
    pg_sink.finish(manifest())
    pg_sink.finish(manifest())
    with psycopg.connect(pg_url) as conn:
        found = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
            (table, "%USING hnsw%"),
        ).fetchall()
        assert len(found) == 1 and "vector_cosine_ops" in found[0][0]
        query = sql.SQL(
            "SELECT id, chunk FROM {} ORDER BY embedding <=> %s::vector LIMIT 1"
        ).format(sql.Identifier(table))
        probe = make_batch({"a": 3, "b": 2}).vectors[4].tolist()
        assert conn.execute(query, (str(probe),)).fetchone() == ("b", 1)


def test_pgvector_schema_table_and_a_table_dropped_meanwhile(pg_url: str) -> None:  # noqa: F811
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sink_test CASCADE")
        conn.execute("CREATE SCHEMA sink_test")
    sink = PgvectorSink(PgvectorSinkConfig("pg", "sink_test.Chunks", dsn=pg_url))
    sink.write(make_batch({"a": 2}))
    sink.finish(manifest())
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute('DROP TABLE sink_test."Chunks"')
    sink.write(make_batch({"b": 1}))
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute('SELECT id, chunk FROM sink_test."Chunks"').fetchall()
    assert rows == [("b", 0)]
    sink.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pgvector_postgres_down_is_a_sink_error_without_the_dsn() -> None:
    dsn = f"postgresql://bob:hunter2@127.0.0.1:{closed_port()}/vectors"
    sink = PgvectorSink(PgvectorSinkConfig("pg", "chunks", dsn=dsn))
    with pytest.raises(SinkError) as caught:
        sink.write(make_batch({"a": 1}))
    message = str(caught.value)
    assert message.startswith(f"sink 'pg': writing batch 0 of job {JOB} to table chunks failed")
    assert "OperationalError" in message and "connection refused" in message
    for secret in ("hunter2", "bob", "127.0.0.1", dsn):
        assert secret not in message
    assert caught.value.retryable
    sink.close()


def test_pgvector_dropped_connections_are_reopened(
    pg_sink: PgvectorSink,
    pg_url: str,  # noqa: F811
    table: str,
) -> None:
    pg_sink.write(make_batch({"a": 1}, written_at=100.0))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            ("embeddings-sink-pg",),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    pg_sink.write(make_batch({"a": 2}, written_at=200.0))
    assert [r[:2] for r in rows_of(pg_url, table)] == [("a", 0), ("a", 1)]


@pytest.mark.skipif("TEST_PG_URL" in os.environ, reason="stops and starts its own server")
def test_pgvector_survives_a_server_restart() -> None:
    import pgserver

    root = server_dir()
    server = pgserver.get_server(root / "data", cleanup_mode="stop")
    url = server.get_uri()
    sink = PgvectorSink(PgvectorSinkConfig("pg", "chunks", dsn=url))
    try:
        sink.write(make_batch({"a": 1}, written_at=100.0))
        server.cleanup()  # stops it
        with pytest.raises(SinkError) as caught:
            sink.write(make_batch({"a": 1}, written_at=150.0))
        assert url not in str(caught.value) and caught.value.retryable
        server = pgserver.get_server(root / "data", cleanup_mode="stop")
        assert server.get_uri() == url
        sink.write(make_batch({"a": 2}, written_at=200.0))
        assert [r[:2] for r in rows_of(url, "chunks")] == [("a", 0), ("a", 1)]
    finally:
        sink.close()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
