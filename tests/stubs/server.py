"""A provider stand-in on 127.0.0.1 for tests: a threaded stdlib HTTP server that counts
requests per path, keeps what it was sent, and answers with scripted behaviours.

`behave("429", "500")` makes the next two embedding calls answer 429 then 500; `default`
is what every call after them gets ("ok" unless set). Each stub module maps behaviour
names to its provider's documented wire format.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def vector(text: str, dimensions: int) -> np.ndarray:
    """A unit float32 vector that depends only on the text: what the stub 'model' answers."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    row = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    return (row / np.linalg.norm(row)).astype(np.float32)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    @classmethod
    def json(cls, status: int, payload: object, **headers: str) -> Reply:
        return cls(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        )


class StubServer:
    hang_seconds = 5.0

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seen: list[Seen] = []
        self.default = "ok"
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                headers = {name.lower(): value for name, value in self.headers.items()}
                seen = Seen(self.command, self.path, headers, body)
                with stub._lock:
                    stub.counts[f"{self.command} {self.path}"] += 1
                    stub.seen.append(seen)
                reply = stub.answer(seen)
                if reply is None:  # a hang: answer long after the client gave up
                    time.sleep(stub.hang_seconds)
                    reply = Reply.json(200, {})
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = _serve
            do_POST = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.seen.clear()
            self._script.clear()
            self.default = "ok"

    def behave(self, *behaviours: str) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def next_behaviour(self) -> str:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def count(self, path: str) -> int:
        with self._lock:
            return sum(n for key, n in self.counts.items() if key.endswith(f" {path}"))

    def bodies(self, path: str) -> list[dict]:
        with self._lock:
            return [s.body for s in self.seen if s.path == path and s.body is not None]

    def answer(self, seen: Seen) -> Reply | None:
        raise NotImplementedError
