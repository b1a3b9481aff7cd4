"""A small HTTP client of the service, for the CLI (and anyone scripting against it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests


class ApiError(RuntimeError):
    """An error answer from the service: status and its JSON error message."""


@dataclass
class Client:
    url: str = "http://localhost:3010"
    api_key: str | None = None
    timeout: float = 120.0
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if self.api_key:
            self.session.headers["Authorization"] = f"Bearer {self.api_key}"

    def _call(self, method: str, path: str, **kwargs: object) -> requests.Response:
        response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)  # type: ignore[arg-type]
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise ApiError(f"{response.status_code}: {message}")
        return response

    def embed(self, texts: list[str], model: str | None = None) -> dict:
        body: dict[str, object] = {"input": texts}
        if model:
            body["model"] = model
        return self._call("POST", "/api/v1/embeddings", json=body).json()

    def submit_index_job(self, documents: IO[bytes], params: dict[str, str]) -> dict:
        """Stream a JSONL file to the service (never read whole into memory)."""
        headers = {"Content-Type": "application/x-ndjson"}
        return self._call(
            "POST", "/api/v1/index-jobs", data=documents, params=params, headers=headers
        ).json()

    def sinks(self) -> list[dict]:
        return self._call("GET", "/api/v1/sinks").json()["data"]

    def index_job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/v1/index-jobs/{job_id}").json()

    def index_jobs(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/api/v1/index-jobs", params={"limit": limit}).json()["data"]

    def cancel_index_job(self, job_id: str) -> dict:
        return self._call("DELETE", f"/api/v1/index-jobs/{job_id}").json()

    def usage(self, params: dict[str, str]) -> dict:
        return self._call("GET", "/api/v1/usage", params=params).json()

    def results_page(
        self, job_id: str, cursor: int, batches: int, fmt: str = "ndjson"
    ) -> tuple[Iterator[bytes], int | None]:
        """One page of results as a byte stream, and the cursor of the next page."""
        response = self._call(
            "GET", f"/api/v1/index-jobs/{job_id}/results",
            params={"cursor": cursor, "limit": batches, "format": fmt}, stream=True,
        )  # fmt: skip
        following = response.headers.get("X-Next-Cursor")
        return response.iter_content(1 << 16), int(following) if following else None


def save_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
