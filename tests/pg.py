"""A real PostgreSQL with pgvector for tests: a server from the pgserver wheel, started
once per session, or the one TEST_PG_URL names. Register it in conftest.py with
`from tests.pg import pg_url`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    if url := os.environ.get("TEST_PG_URL"):
        yield url
        return
    pgserver = pytest.importorskip("pgserver")
    root = server_dir()
    server = pgserver.get_server(root / "data", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def server_dir() -> Path:
    """A fresh directory for a pgserver data directory, outside pytest's: under root,
    pgserver runs PostgreSQL as another user and opens the directories above its data
    for it, and every pytest session that starts (anyone's) closes its own base again."""
    return Path(tempfile.mkdtemp(prefix="pgserver-"))


def fresh_database(url: str, name: str) -> str:
    """An empty database `name` on the server (dropped first if there), as a DSN."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(url, dbname=name)
