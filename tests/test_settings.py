"""Settings: the guide's names and defaults; a bad value stops start-up in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.registry import load_registry
from common.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_follow_the_deployment_guide(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.PORT, s.HOST, s.LOG_LEVEL) == (3010, "0.0.0.0", "info")
    assert (s.BATCH_SIZE, s.CACHE_SIZE, s.REQUEST_TIMEOUT_SECONDS) == (32, 1000, 60)
    assert (s.MAX_CONCURRENT_REQUESTS, s.CACHE_TTL_SECONDS) == (100, 3600)
    assert (s.RATE_LIMIT_REQUESTS_PER_MINUTE, s.RATE_LIMIT_BURST) == (1000, 100)
    assert (s.GPU_ENABLED, s.GPU_MEMORY_FRACTION) == (True, 0.8)
    assert s.JOB_TTL_SECONDS == 24 * 3600


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "4000")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("GPU_ENABLED", "false")
    s = load_settings()
    assert (s.PORT, s.LOG_LEVEL, s.GPU_ENABLED) == (4000, "debug", False)


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "abc"), ("PORT", "70000"), ("GPU_MEMORY_FRACTION", "2"), ("BATCH_SIZE", "0"),
     ("REDIS_URL", "localhost:6379"), ("LOG_LEVEL", "loud")],
)  # fmt: skip
def test_malformed_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"invalid setting {name}=")
    assert "\n" not in message


def test_unknown_default_model_is_refused() -> None:
    with pytest.raises(SettingsError, match="DEFAULT_MODEL='nope'"):
        load_registry(load_settings(DEFAULT_MODEL="nope"))


def test_models_file_replaces_the_builtin_registry(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.tiny]\nprovider = "local"\ntarget = "/models/tiny"\ndimensions = 8\n'
        "max_tokens = 64\n"
    )
    registry = load_registry(load_settings(MODELS_FILE=str(path), DEFAULT_MODEL="tiny"))
    assert [spec.name for spec in registry] == ["tiny"]
    assert registry.get(None).dimensions == 8


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn_conf.py", "api.wsgi:app"],
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo"],
        [sys.executable, "-m", "cli", "up"],
    ],
    ids=["api", "worker", "launcher"],
)
def test_processes_refuse_to_start_with_one_clear_line(command: list[str]) -> None:
    env = {"PATH": "/usr/bin:/bin", "PORT": "abc", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert "invalid setting PORT='abc'" in lines[0]


def test_the_operations_page_lists_every_setting() -> None:
    from common.settings import settings_table

    assert settings_table() in (ROOT / "docs" / "operations.md").read_text()
