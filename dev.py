#!/usr/bin/env python3
"""Bootstrap with nothing but Python 3.11: `python3 dev.py up`, `python3 dev.py test`.

Creates .venv, installs requirements/dev.txt and the project (again only when a
requirements file changed), then runs the command inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".requirements.sha256"

USAGE = """usage: python3 dev.py COMMAND [ARGS...]

  up      install, then run Redis (embedded), the API on :3010, a CPU worker, Flower on :5555
  test    install, then run the test suite (pytest ARGS...)
  bench   install, then run the benchmark suites, then their bars' summary: ARGS go to
          bench/run.py, [SUITE ...] of foundation throughput indexing load backends pipeline
          (gpu on a CUDA machine, and scale: only when named), --quick for a smoke run
  lint    ruff check and ruff format --check
  fuzz    install, then fuzz the API from /openapi.json at length: FUZZ_EXAMPLES cases
          per operation and kind (default 200), FUZZ_SEED replays a run; ARGS go to pytest
  install only install
"""


def _requirements_digest() -> str:
    digest = hashlib.sha256()
    for path in [*sorted((ROOT / "requirements").glob("*.txt")), ROOT / "pyproject.toml"]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def install() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (this file may run under any python3)
        sys.exit("Python 3.11 or newer is needed")
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    digest = _requirements_digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing requirements/dev.txt into .venv (first run takes a few minutes) ...")
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements" / "dev.txt")], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    STAMP.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"up", "test", "bench", "lint", "fuzz", "install"}:
        print(USAGE, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    install()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    if command == "fuzz":
        env.setdefault("FUZZ_EXAMPLES", "200")
    python = str(BIN / "python")
    runs = {
        "up": [[str(BIN / "embeddings"), "up", *args]],
        "test": [[python, "-m", "pytest", *args]],
        "fuzz": [[python, "-m", "pytest", str(ROOT / "tests" / "test_fuzz.py"), *args]],
        "bench": [[python, str(ROOT / "bench" / "run.py"), *args]],
        "lint": [
            [python, "-m", "ruff", "check", "."],
            [python, "-m", "ruff", "format", "--check", "."],
        ],
        "install": [],
    }
    *first, last = runs[command] or [[]]
    for cmd in first:
        code = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        if code:
            return code
    if last:  # in this process's place, so Ctrl-C and the exit status are the command's own
        os.chdir(ROOT)
        os.execve(last[0], last, env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
