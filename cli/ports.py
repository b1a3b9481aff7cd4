"""The launcher's ports, taken or checked before anything starts."""

from __future__ import annotations

import socket

BACKLOG = 2048  # gunicorn's default


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A socket bound and listening on host:port, with SO_REUSEADDR as gunicorn makes it.
    Handed to gunicorn (`--bind fd://N`, pass_fds), it is the API's own: while it is open
    nothing else can listen there, so whatever answers on it is the child it was passed to.
    OSError (EADDRINUSE) if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def check_free(host: str, port: int) -> None:
    """OSError (EADDRINUSE) if something listens on host:port."""
    listen(host, port, backlog=1).close()


def local_url(sock: socket.socket) -> str:
    """An http:// URL that reaches `sock` from this machine (loopback for a wildcard)."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
