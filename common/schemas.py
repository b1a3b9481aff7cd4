"""Request and response shapes shared by the API (validation, OpenAPI) and the workers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import InvalidRequest
from common.ledger import Entry
from common.storage import Hold

EncodingFormat = Literal["float", "base64"]
MAX_METADATA_DEPTH = 64
"""Levels of nesting a document's metadata may have (the object itself is one)."""


class EmbedOptions(BaseModel):
    """Options that change the vector: they travel to the worker and into the cache key."""

    model_config = ConfigDict(frozen=True)

    normalize: bool = True
    truncate: bool = True
    dimensions: int | None = None


class EmbedTask(BaseModel):
    """The message the API sends to a worker for one job."""

    job_id: str
    model: str
    texts: list[str]
    tokens: list[int] = Field(description="Tokens per text after truncation (batch budget).")
    options: EmbedOptions
    cache_keys: list[str] | None = Field(
        default=None, description="One Redis cache key per text; None: do not cache."
    )
    cache_read: bool = True
    cache_ttl_seconds: int = 3600
    deadline: float | None = Field(
        default=None, description="Epoch seconds after which the client no longer waits."
    )
    ledger: Entry | None = Field(
        default=None, description="Its note in common/ledger.py, removed when it starts."
    )
    holds: list[Hold] = Field(
        default_factory=list,
        description="Its bytes held in common/storage.py (one per call it serves), released "
        "when it starts.",
    )


class EmbeddingRequest(BaseModel):
    """Body of POST /api/v1/embeddings and POST /api/v1/jobs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str | None, Field(description="Model name; DEFAULT_MODEL if absent.")] = None
    input: Annotated[
        str | list[str], Field(description="One text or a list of texts (1 to MAX_INPUTS).")
    ]
    normalize: bool = True
    truncate: Annotated[
        bool, Field(description="Cut texts past the model's max tokens (else refuse them).")
    ] = True
    encoding_format: EncodingFormat = "float"
    dimensions: Annotated[
        int | None,
        Field(ge=1, description="Fewer dimensions, for models that support them (Matryoshka)."),
    ] = None

    @field_validator("input")
    @classmethod
    def _texts_are_usable(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("must not be an empty list")
        for text in texts:
            if not text.strip():
                raise ValueError("texts must not be empty or only whitespace")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input

    @property
    def options(self) -> EmbedOptions:
        return EmbedOptions(
            normalize=self.normalize, truncate=self.truncate, dimensions=self.dimensions
        )


class Document(BaseModel):
    """One line of an upload, or one entry of `documents`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str | int, Field(description="Your id; results are keyed by it.")]
    text: Annotated[str, Field(min_length=1)]
    metadata: dict[str, object] | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        return value

    @field_validator("metadata")
    @classmethod
    def _not_too_deep(cls, value: dict[str, object] | None) -> dict[str, object] | None:
        # orjson re-encodes it (spool, Redis, results) and stops at 255 levels: a 500.
        level: list[object] = [value]
        for _ in range(MAX_METADATA_DEPTH + 1):
            level = [x for v in level if isinstance(v, dict | list)
                     for x in (v.values() if isinstance(v, dict) else v)]  # fmt: skip
            if not level:
                return value
        raise ValueError(f"must not be nested deeper than {MAX_METADATA_DEPTH} levels")


class Chunking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: Annotated[int | None, Field(ge=8, description="Default: the model's.")] = None
    overlap_tokens: Annotated[int, Field(ge=0)] = 0


class IndexJobOptions(BaseModel):
    """Options of an index job: JSON body fields, or query/form fields of an upload."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    chunking: Chunking = Chunking()
    normalize: bool = True
    on_error: Annotated[
        Literal["fail", "skip"],
        Field(description="fail: refuse the upload if any document is bad; skip: run the rest."),
    ] = "fail"
    sink: Annotated[
        str | None,
        Field(description="A result sink the operator named (GET /api/v1/sinks); unset: Redis."),
    ] = None
    cache: Annotated[
        Literal["read", "write", "off"],
        Field(description="read: use cached vectors; write: also cache new ones; off: neither."),
    ] = "read"


class IndexBatchTask(EmbedTask):
    """One batch of an index job: whole documents' chunks, in plan order."""

    batch: int
    docs: int
    sink: str | None = Field(default=None, description="The sink's name; None: Redis.")
    rows: list[tuple[str, int, int, int]] | None = Field(
        default=None, description="A sink job's plan: (doc id, chunk, start, end) per text."
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="A sink job's metadata: doc id -> JSON text."
    )


class IndexFinishTask(BaseModel):
    """Close a finished sink job: its manifest, its vector index (common/sinks)."""

    job_id: str


def _param(loc: tuple[int | str, ...]) -> str:
    """('input', 3) -> 'input[3]'; pydantic's union branch names are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("str", "list[str]") and not part.startswith(("function-", "literal")):
            out += f".{part}" if out else part
    return out or "body"


def first_error(error: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(param, message) of a validation error, the param as `documents[3].text`."""
    errors = error.errors()
    # A union (str | list[str]) reports one error per branch; the list branch is the
    # informative one when the input was a list.
    chosen = next((e for e in errors if "list[str]" in e["loc"]), errors[0])
    param = _param(chosen["loc"])
    if prefix:
        param = f"{prefix}.{param}" if param != "body" else prefix
    return param, chosen["msg"].removeprefix("Value error, ")


def parse_request(body: object, max_inputs: int) -> EmbeddingRequest:
    """Validate a decoded JSON body; InvalidRequest names the offending field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", param="body")
    try:
        request = EmbeddingRequest.model_validate(body)
    except ValidationError as error:
        param, message = first_error(error)
        raise InvalidRequest(f"{param}: {message}", param=param) from None
    if len(request.texts) > max_inputs:
        raise InvalidRequest(
            f"input: at most {max_inputs} texts per request, got {len(request.texts)}",
            param="input",
        )
    return request
