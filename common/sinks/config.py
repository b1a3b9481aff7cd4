"""The operator's named sinks, read from the TOML file that SINKS_FILE names.

[sinks.files]
kind = "parquet"
path = "/data/vectors"            # a directory, or an fsspec URL (s3://, gs://, ...)

[sinks.pg]
kind = "pgvector"
dsn_env = "PG_DSN"                # or dsn = "postgresql://...": kept out of every message
table = "chunks"                  # or schema.table
create_index = true               # an HNSW cosine index when a job finishes
stalled_seconds = 30              # a writer frozen inside its transaction this long (its
                                  # worker stopped, paused or cut off) is ended by Postgres,
                                  # and the locks it held go with it
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from common.settings import SettingsError
from common.sinks.errors import SinkError

SINK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
TABLE_NAME = re.compile(rf"(?:{_IDENTIFIER}\.)?{_IDENTIFIER}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ParquetSinkConfig:
    kind: ClassVar[str] = "parquet"
    name: str
    path: str


@dataclass(frozen=True)
class PgvectorSinkConfig:
    kind: ClassVar[str] = "pgvector"
    name: str
    table: str
    create_index: bool = True
    dsn: str | None = field(default=None, repr=False)
    dsn_env: str | None = None
    stalled_seconds: float = 30.0
    """Postgres ends a write session idle inside its transaction this long (its locks too)."""

    def resolve_dsn(self) -> str:
        """The DSN, read from the environment at use time when the file names a variable."""
        if self.dsn:
            return self.dsn
        value = os.environ.get(self.dsn_env or "")
        if not value:
            raise SinkError(self.name, f"the environment variable {self.dsn_env} is not set")
        return value


SinkConfig = ParquetSinkConfig | PgvectorSinkConfig

_KEYS: dict[str, set[str]] = {
    "parquet": {"kind", "path"},
    "pgvector": {"kind", "table", "create_index", "dsn", "dsn_env", "stalled_seconds"},
}


def load_sinks(path: Path | None) -> dict[str, SinkConfig]:
    """The sinks the file names; a bad file raises SettingsError in one line."""
    if path is None:
        return {}
    where = f"invalid setting SINKS_FILE={str(path)!r}"
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise SettingsError(f"{where}: {first}") from None
    extra = sorted(set(raw) - {"sinks"})
    if extra:
        raise SettingsError(f"{where}: unknown key {extra[0]!r} (sinks go under [sinks.<name>])")
    entries = raw.get("sinks", {})
    if not isinstance(entries, dict):
        raise SettingsError(f"{where}: sinks must be a table of [sinks.<name>] tables")
    sinks: dict[str, SinkConfig] = {}
    for name, entry in entries.items():
        try:
            sinks[name] = _sink(name, entry)
        except ValueError as error:
            label = name if SINK_NAME.fullmatch(name) else repr(name)[:80]
            raise SettingsError(f"{where}: sinks.{label}: {error}") from None
    return sinks


def _sink(name: str, entry: object) -> SinkConfig:
    if not SINK_NAME.fullmatch(name):
        raise ValueError("a sink name is 1 to 64 letters, digits, '_' or '-'")
    if not isinstance(entry, dict):
        raise ValueError("must be a table")
    kind = entry.get("kind")
    if kind not in _KEYS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(sorted(_KEYS))})")
    unknown = sorted(set(entry) - _KEYS[kind])
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} for kind {kind!r}")
    if kind == "parquet":
        path = _text(entry, "path")
        if "://" not in path and not os.path.isabs(os.path.expanduser(path)):
            raise ValueError(f"path {path!r} must be absolute (or a URL): every process reads it")
        return ParquetSinkConfig(name=name, path=path)
    table = _text(entry, "table")
    if not TABLE_NAME.fullmatch(table):
        raise ValueError(f"table {table!r} is not a plain SQL name (table or schema.table)")
    create_index = entry.get("create_index", True)
    if not isinstance(create_index, bool):
        raise ValueError("create_index must be true or false")
    dsn, dsn_env = entry.get("dsn"), entry.get("dsn_env")
    if (dsn is None) == (dsn_env is None):
        raise ValueError("give exactly one of dsn and dsn_env")
    if dsn is not None and (not isinstance(dsn, str) or not dsn.strip()):
        raise ValueError("dsn must be a non-empty string")  # never echo its value
    if dsn_env is not None and not (isinstance(dsn_env, str) and ENV_NAME.fullmatch(dsn_env)):
        raise ValueError("dsn_env must name an environment variable")
    stalled = entry.get("stalled_seconds", PgvectorSinkConfig.stalled_seconds)
    if isinstance(stalled, bool) or not isinstance(stalled, int | float) or not 0 < stalled <= 3600:
        raise ValueError("stalled_seconds must be a number of seconds, more than 0, at most 3600")
    return PgvectorSinkConfig(
        name=name, table=table, create_index=create_index, dsn=dsn, dsn_env=dsn_env,
        stalled_seconds=float(stalled),
    )  # fmt: skip


def _text(entry: dict[str, object], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} is required (a non-empty string)")
    return value


def public(sinks: dict[str, SinkConfig]) -> list[dict[str, str]]:
    """What clients may see of the sinks (GET /api/v1/sinks): names and kinds."""
    return [{"name": name, "kind": sinks[name].kind} for name in sorted(sinks)]
