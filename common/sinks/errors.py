"""SinkError: a result sink that could not take or give back vectors."""

from __future__ import annotations

from common.errors import Unavailable


class SinkError(Unavailable):
    """The message starts with the sink's name and never holds a DSN or a password.

    `retryable`: worth another try later (the database is down or restarting, a connection
    dropped, a lock conflict); otherwise the sink refuses the batch as it is (a dimension
    mismatch, a full disk, a permission)."""

    type = "sink_error"

    def __init__(self, sink: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"sink {sink!r}: {message}")
        self.sink = sink
        self.retryable = retryable
