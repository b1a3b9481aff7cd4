"""Child processes of the local launcher and the embedded Redis."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None  # looked up before fork


def _detach() -> None:
    """In the child, before exec: a session of its own, so a terminal's Ctrl-C reaches only
    the parent, which stops its children in order; and SIGTERM if the parent dies first
    (Linux), so a killed launcher leaves nothing running."""
    os.setsid()
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Popen in a session of its own that ends with its parent."""
    return subprocess.Popen(args, preexec_fn=_detach, **popen)
