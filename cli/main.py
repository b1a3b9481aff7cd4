"""The `embeddings` command: run the system locally, or talk to a running one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli import indexer, launcher
from cli.client import ApiError, Client
from common.api_keys import LIMIT_FIELDS

url_option = click.option(
    "--url", default="http://localhost:3010", envvar="EMBEDDINGS_URL", show_default=True
)
key_option = click.option("--api-key", envvar="EMBEDDINGS_API_KEY", default=None)


@click.group()
def main() -> None:
    """Embeddings service: run it locally, or talk to it."""


@main.command()
@click.option("--flower-port", default=5555, show_default=True, envvar="FLOWER_PORT")
@click.option("--gpu-worker/--no-gpu-worker", default=False, help="Also run a gpu-queue worker.")
@click.option(
    "--run-dir", default=Path(".run"), type=click.Path(path_type=Path), show_default=True,
    help="Where the embedded Redis keeps its data.",
)  # fmt: skip
def up(flower_port: int, gpu_worker: bool, run_dir: Path) -> None:
    """Start Redis (embedded unless REDIS_URL is set), the API, a CPU worker and Flower."""
    raise SystemExit(launcher.run(flower_port, gpu_worker, run_dir))


@main.command("settings")
def show_settings() -> None:
    """Print every setting (environment variable) with its default and meaning."""
    from common.settings import settings_table

    click.echo(settings_table())


@main.command("export-onnx")
@click.option("--model", "names", multiple=True, help="Only these models (default: all).")
def export_onnx(names: tuple[str, ...]) -> None:
    """Export the registry's onnx/onnx-int8 models into MODEL_CACHE_DIR. Needs torch
    (requirements/torch.txt); CPU workers then serve them without it."""
    from common.registry import load_registry
    from common.settings import SettingsError, load_settings
    from workers.providers.onnx import ensure_export

    try:
        settings = load_settings()
        registry = load_registry(settings)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    specs = [s for s in registry if s.backend.startswith("onnx") and s.enabled]
    if unknown := set(names) - {s.name for s in specs}:
        raise click.ClickException(f"no enabled onnx model named {', '.join(sorted(unknown))}")
    for spec in specs:
        if not names or spec.name in names:
            path = ensure_export(spec, settings.MODEL_CACHE_DIR, spec.backend == "onnx-int8")
            click.echo(f"{spec.name}: {path}")


@main.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--model", default=None)
@url_option
@key_option
def embed(texts: tuple[str, ...], model: str | None, url: str, api_key: str | None) -> None:
    """Embed TEXTS and print the answer as JSON."""
    try:
        click.echo(json.dumps(Client(url, api_key).embed(list(texts), model)))
    except ApiError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.argument("source", required=False, type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Download the vectors here (needed unless --sink names where they go).",
)
@click.option("--job", "job_id", default=None, help="Re-attach to this job instead of submitting.")
@click.option("--model", default=None)
@click.option("--max-tokens", type=int, default=None, help="Chunk size in tokens.")
@click.option("--overlap-tokens", type=int, default=None)
@click.option("--skip-bad", is_flag=True, help="Run the good documents when some are bad.")
@click.option("--sink", default=None, help="Write the vectors to this sink (embeddings sinks).")
@click.option("--format", "fmt", type=click.Choice(["ndjson", "npy", "npz"]), default="ndjson")
@url_option
@key_option
def index(
    source: Path | None, output: Path | None, job_id: str | None, model: str | None,
    max_tokens: int | None, overlap_tokens: int | None, skip_bad: bool, sink: str | None,
    fmt: str, url: str, api_key: str | None,
) -> None:  # fmt: skip
    """Index the documents of a JSONL file ({"id", "text", "metadata"?} per line)."""
    if output is None and sink is None:
        raise click.UsageError("give -o OUTPUT to download the vectors, or --sink NAME")
    params = {"model": model, "max_tokens": max_tokens, "overlap_tokens": overlap_tokens,
              "on_error": "skip" if skip_bad else None, "sink": sink}  # fmt: skip
    params = {k: str(v) for k, v in params.items() if v is not None}
    try:
        raise SystemExit(indexer.run(Client(url, api_key), source, job_id, output, fmt, params))
    except ApiError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--limit", default=20, show_default=True)
@url_option
@key_option
def jobs(limit: int, url: str, api_key: str | None) -> None:
    """List index jobs, newest first."""
    try:
        rows = Client(url, api_key).index_jobs(limit)
    except ApiError as error:
        raise click.ClickException(str(error)) from None
    for job in rows:
        docs = job["documents"]
        click.echo(
            f"{job['id']}  {job['status']:<10} {job['model']:<20} "
            f"{docs['done']}/{docs['total']} docs  {job['created_at']}"
        )


@main.command()
@url_option
@key_option
def sinks(url: str, api_key: str | None) -> None:
    """List the result sinks the operator configured (names and kinds)."""
    try:
        rows = Client(url, api_key).sinks()
    except ApiError as error:
        raise click.ClickException(str(error)) from None
    for row in rows:
        click.echo(f"{row['name']}\t{row['kind']}")
    if not rows:
        click.echo("no sinks configured (the operator sets SINKS_FILE)")


@main.group()
def keys() -> None:
    """API keys (talks to Redis at REDIS_URL directly: run it where the service runs)."""


def _key_store():  # type: ignore[no-untyped-def]
    import redis

    from common import logs
    from common.api_keys import KeyStore
    from common.redis_client import connect, tls_options
    from common.settings import SettingsError, load_settings, masked_url

    try:
        settings = load_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    logs.configure(settings.LOG_LEVEL, settings.RUST_LOG, "cli", "json")  # audit lines
    client = connect(settings.REDIS_URL, tls=tls_options(settings))
    try:
        client.ping()
    except redis.RedisError as error:
        where = masked_url(settings.REDIS_URL)
        raise click.ClickException(f"cannot reach Redis at {where}: {error}") from None
    return KeyStore(client)


def _limit_options(command):  # type: ignore[no-untyped-def]
    """The options of a key's limits (common/api_keys.KeyLimits), for create and update."""
    count = click.IntRange(min=1)
    options = [
        click.option("--label", default=None, help="Free text."),
        click.option("--model", "models", multiple=True,
                     help="A model it may use (repeat it); default: every model."),
        click.option("--requests-per-minute", type=count, default=None,
                     help="In place of RATE_LIMIT_REQUESTS_PER_MINUTE."),
        click.option("--tokens-per-minute", type=count, default=None),
        click.option("--tokens-per-day", type=count, default=None, help="A daily quota (UTC)."),
        click.option("--tokens-per-month", type=count, default=None,
                     help="A monthly quota (UTC)."),
        click.option("--storage-bytes", type=count, default=None,
                     help="In place of STORAGE_BYTES_PER_KEY: its files and queued texts."),
        click.option("--expires-at", default=None,
                     help="ISO 8601, e.g. 2026-01-31T00:00:00Z (UTC unless it says); then 401."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _limits(given: dict[str, object]):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from common.api_keys import KeyLimits

    values = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()
              if v is not None and v != ()}  # fmt: skip
    try:
        return KeyLimits.model_validate(values)
    except ValidationError as error:
        problem = error.errors()[0]
        raise click.ClickException(f"{problem['loc'][0]}: {problem['msg']}") from None


def _audit(event: str, **details: object) -> None:
    from common.audit import audit

    audit(event, actor="cli", via="cli", **details)


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--role", type=click.Choice(["admin", "client"]), default="client", show_default=True,
    help="admin: manages keys, sees every key's work and usage.",
)  # fmt: skip
@_limit_options
def keys_create(name: str, role: str, **limits: object) -> None:
    """Create a key. Its text is printed once; only its hash is stored."""
    store = _key_store()
    key, text = store.create(name, role, _limits(limits))  # type: ignore[arg-type]
    _audit("key_created", key_id=key.id, role=role)
    click.echo(text)
    click.echo(f"created {role} key {key.id} ({name}); auth is on for good", err=True)


@keys.command("update")
@click.argument("key_id")
@_limit_options
@click.option("--clear", "cleared", multiple=True, type=click.Choice(LIMIT_FIELDS),
              help="Remove this limit (repeat it).")  # fmt: skip
def keys_update(key_id: str, cleared: tuple[str, ...], **limits: object) -> None:
    """Change a key's limits: the options given, and --clear ones."""
    changes = _limits(limits).model_dump(exclude_unset=True) | dict.fromkeys(cleared)
    if not changes:
        raise click.UsageError("give a limit to set, or --clear NAME")
    key = _key_store().update(key_id, changes)
    if key is None:
        raise click.ClickException(f"no key {key_id!r}")
    _audit("key_updated", key_id=key_id, changed=sorted(changes))
    click.echo(_key_line(key))


def _key_line(key) -> str:  # type: ignore[no-untyped-def]
    limits = key.limits.model_dump(mode="json", exclude_none=True)
    shown = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in limits.items())
    return f"{key.id}  {key.role:<6}  {key.name}  {shown}".rstrip()


@keys.command("list")
def keys_list() -> None:
    """List keys (ids, roles, names and limits; never the keys themselves)."""
    for key in _key_store().list():
        click.echo(_key_line(key))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id: its calls fail from now on (auth stays on)."""
    if not _key_store().revoke(key_id):
        raise click.ClickException(f"no key {key_id!r}")
    _audit("key_revoked", key_id=key_id)
    click.echo(f"revoked {key_id}", err=True)


@main.command()
@click.option("--from", "first", default=None, help="First UTC day, YYYY-MM-DD.")
@click.option("--to", "last", default=None, help="Last UTC day, YYYY-MM-DD (default: today).")
@click.option("--key", default=None, help="Admin keys: another key's id, or all.")
@url_option
@key_option
def usage(first: str | None, last: str | None, key: str | None, url: str,
          api_key: str | None) -> None:  # fmt: skip
    """Requests, input tokens and cache hits by day and model (GET /api/v1/usage)."""
    params = {k: v for k, v in {"from": first, "to": last, "key": key}.items() if v}
    try:
        body = Client(url, api_key).usage(params)
    except ApiError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{'date':<10}  {'key':<12}  {'model':<28}  {'requests':>9}  "
               f"{'input tokens':>12}  {'cache hits':>10}")  # fmt: skip
    for row in [*body["data"], {"date": "total", "key": "", "model": "", **body["total"]}]:
        click.echo(
            f"{row['date']:<10}  {row['key']:<12}  {row['model']:<28}  {row['requests']:>9}  "
            f"{row['input_tokens']:>12}  {row['cache_hits']:>10}"
        )
