"""The `embeddings` command."""

from __future__ import annotations

from pathlib import Path

import click

from cli import launcher


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
