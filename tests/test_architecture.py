"""Imports go api -> common <- workers, and the API never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_API = {"torch", "sentence_transformers", "transformers", "workers"}


def imported_roots(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_api_source_never_imports_torch_or_workers() -> None:
    roots = imported_roots("api")
    assert not {name: roots[name] for name in FORBIDDEN_IN_API & roots.keys()}


def test_common_never_imports_api_or_workers() -> None:
    roots = imported_roots("common")
    assert not ({"api", "workers", "torch", "sentence_transformers"} & roots.keys())


def test_api_app_loads_without_torch(redis_url: str) -> None:
    code = (
        "import sys\n"
        "from api.app import create_app\n"
        "from common.settings import load_settings\n"
        f"app = create_app(load_settings(REDIS_URL={redis_url!r}))\n"
        "app.test_client().get('/api/v1/models')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(FORBIDDEN_IN_API)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
