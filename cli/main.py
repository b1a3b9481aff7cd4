"""The `embeddings` command: run the system locally, or talk to a running one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli import indexer, launcher
from cli.client import ApiError, Client

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
    from common.api_keys import KeyStore
    from common.redis_client import connect
    from common.settings import SettingsError, load_settings

    try:
        return KeyStore(connect(load_settings().REDIS_URL))
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
def keys_create(name: str) -> None:
    """Create a key. Its text is printed once; only its hash is stored."""
    key, text = _key_store().create(name)
    click.echo(text)
    click.echo(f"created key {key.id} ({name}); auth is now on for every caller", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys (ids and names; never the keys themselves)."""
    for key in _key_store().list():
        click.echo(f"{key.id}  {key.name}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id: its calls fail from now on."""
    if not _key_store().revoke(key_id):
        raise click.ClickException(f"no key {key_id!r}")
    click.echo(f"revoked {key_id}", err=True)
