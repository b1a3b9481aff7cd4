"""`embeddings index`: upload, watch progress, download; re-attach after an interrupt.

The job id and the download cursor are kept in `<output>.state`, so `embeddings index
--job <id> -o <output>` (or the same command again) carries on where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from cli.client import Client, save_atomically

POLL_SECONDS = 1.0
PAGE_BATCHES = 64


def say(message: str) -> None:
    """A status line on stderr that does not break the progress bar."""
    tqdm.write(message, file=sys.stderr)


@dataclass
class State:
    job_id: str
    cursor: int = 0

    @staticmethod
    def path(output: Path) -> Path:
        return output.with_name(output.name + ".state")

    @classmethod
    def load(cls, output: Path) -> State | None:
        path = cls.path(output)
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self, output: Path) -> None:
        save_atomically(self.path(output), json.dumps(asdict(self)))


def submit(client: Client, source: Path, params: dict[str, str]) -> str:
    with source.open("rb") as documents:
        job = client.submit_index_job(documents, params)
    say(f"job {job['id']}: {job['documents']} documents queued, {job['rejected']} rejected")
    return job["id"]


def watch(client: Client, job_id: str) -> dict:
    """A progress bar over chunks (rate and ETA) until the job ends."""
    job = client.index_job(job_id)
    with tqdm(total=job["chunks"]["total"], unit="chunk", desc=job_id[:12]) as bar:
        while True:
            bar.total = job["chunks"]["total"]
            bar.n = job["chunks"]["done"] + job["chunks"]["failed"]
            bar.set_postfix(docs=job["documents"]["done"], failed=job["documents"]["failed"])
            bar.refresh()
            if job["status"] not in ("queued", "running", "cancelling"):
                return job
            time.sleep(POLL_SECONDS)
            job = client.index_job(job_id)


def download(client: Client, state: State, output: Path, fmt: str) -> None:
    """Page by page from the saved cursor, appending; the cursor is saved after each page."""
    mode = "ab" if state.cursor else "wb"
    with output.open(mode) as sink:
        while True:
            stream, following = client.results_page(state.job_id, state.cursor, PAGE_BATCHES, fmt)
            for piece in stream:
                sink.write(piece)
            sink.flush()
            if following is None or fmt != "ndjson" or following == state.cursor:
                break
            state.cursor = following
            state.save(output)


def run(
    client: Client, source: Path | None, job_id: str | None, output: Path | None, fmt: str,
    params: dict[str, str],
) -> int:  # fmt: skip
    """Submit (or re-attach), watch, then download to `output`; without one (a sink job),
    the vectors stay in the sink."""
    saved = State.load(output) if output else None
    if job_id is None and saved is not None:
        job_id = saved.job_id
        say(f"re-attaching to job {job_id} (from {State.path(output)})")  # type: ignore[arg-type]
    if job_id is None:
        if source is None:
            raise SystemExit("give a JSONL file to index, or --job <id> to re-attach")
        job_id = submit(client, source, params)
    state = saved if saved is not None and saved.job_id == job_id else State(job_id)
    if output:
        state.save(output)
    job = watch(client, job_id)
    if output:
        download(client, state, output, fmt)
        State.path(output).unlink(missing_ok=True)
    chunks, docs = job["chunks"], job["documents"]
    where = output or f"sink {job.get('sink')}"
    say(
        f"{job['status']}: {chunks['done']} chunks of {docs['done']} documents -> {where}"
        + (f"; {docs['failed']} documents failed" if docs["failed"] else "")
    )
    for failure in job.get("failures", [])[:10]:
        say(f"  failed {failure['id']}: {failure['reason']}")
    return 0 if job["status"] == "succeeded" else 1
