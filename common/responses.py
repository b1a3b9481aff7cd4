"""Response shapes of the native API, beside the request models in common/schemas.py.

The OpenAPI document (api/openapi.py) is generated from these and from the request
models; tests/test_openapi.py validates real answers against it, so a change to a route's
body that is not made here too fails a test.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.api_keys import KeyLimits, Role
from common.schemas import Document, IndexJobOptions

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "cancelling"]
Timestamp = Annotated[str, Field(description="ISO 8601, UTC.")]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Annotated[str, Field(description="The error kind, e.g. invalid_request_error.")]
    message: str
    param: Annotated[
        str | None, Field(description="The request field at fault, e.g. input[3].")
    ] = None
    job_id: Annotated[str | None, Field(description="A timeout's or failed job's id.")] = None
    status_url: Annotated[str | None, Field(description="A timed-out job: poll here.")] = None
    provider: Annotated[str | None, Field(description="The remote provider that failed.")] = None


class ErrorResponse(BaseModel):
    """Every error: 4xx for what the client can fix, 5xx for what it cannot."""

    error: ErrorDetail


class EmbeddingItem(BaseModel):
    index: int
    embedding: Annotated[
        list[float] | str,
        Field(description="float32 values, or base64 of little-endian float32 bytes."),
    ]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """Answer of POST /api/v1/embeddings, and a finished job's result."""

    model: str
    data: list[EmbeddingItem]
    dimensions: int
    usage: Usage


class JobAccepted(BaseModel):
    id: str
    status: Literal["queued"]
    status_url: str


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class JobResponse(BaseModel):
    id: str
    status: JobState
    status_url: str
    model: str
    count: Annotated[int, Field(description="Texts in the job.")]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    result: Annotated[EmbeddingResponse | None, Field(description="Once succeeded.")] = None
    error: Annotated[JobError | None, Field(description="Once failed.")] = None


class JobList(BaseModel):
    data: Annotated[list[JobResponse], Field(description="Newest first, without `result`.")]
    next_cursor: Annotated[str | None, Field(description="Pass as ?cursor= for more.")]


class IndexJobRequest(IndexJobOptions):
    """JSON body of POST /api/v1/index-jobs (uploads send the documents as JSONL instead)."""

    documents: Annotated[list[Document], Field(min_length=1)]


class IndexJobAccepted(BaseModel):
    id: str
    status: Literal["queued"]
    documents: Annotated[int, Field(description="Valid documents queued.")]
    rejected: Annotated[int, Field(description="Bad documents skipped (on_error=skip).")]
    status_url: str
    results_url: str


class Counts(BaseModel):
    total: int
    done: int
    failed: int


class Rate(BaseModel):
    chunks_per_second: float
    documents_per_second: float


class ChunkingUsed(BaseModel):
    """Empty for jobs that were not chunked (the OpenAI Batch front's)."""

    max_tokens: int | None = None
    overlap_tokens: int | None = None


class IndexJobProgress(BaseModel):
    id: str
    status: JobState
    model: str
    submitting: Annotated[bool, Field(description="The upload is still being read.")]
    documents: Counts
    chunks: Counts
    batches: int
    chunking: ChunkingUsed
    dimensions: int
    sink: Annotated[str | None, Field(description="The result sink's name; null: Redis.")]
    sink_error: Annotated[
        str | None, Field(description="The sink's last error while writes are retried.")
    ]
    rate: Rate
    eta_seconds: float | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    status_url: str
    results_url: str


class DocumentFailure(BaseModel):
    id: str
    reason: str


class IndexJobDetail(IndexJobProgress):
    failures: Annotated[list[DocumentFailure], Field(description="Up to 100 failed documents.")]


class IndexJobList(BaseModel):
    data: list[IndexJobProgress]
    next_cursor: Annotated[str | None, Field(description="Pass as ?cursor= for more.")]


class IndexResultLine(BaseModel):
    """One line of GET /api/v1/index-jobs/{id}/results?format=ndjson."""

    id: str | int
    chunk: int
    start: Annotated[int, Field(description="Character offset of the chunk in the text.")]
    end: int
    metadata: dict[str, object] | None
    embedding: list[float]


class SinkInfo(BaseModel):
    name: str
    kind: Literal["parquet", "pgvector"]


class SinkList(BaseModel):
    data: list[SinkInfo]


class ModelInfo(BaseModel):
    id: str
    provider: Literal["local", "ollama", "openai"]
    dimensions: int | None
    max_tokens: int
    queue: str
    revision: str | None
    default: bool
    available: bool
    unavailable_reason: str | None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelInfo]


class CacheCleared(BaseModel):
    cleared: Annotated[str, Field(description="all, a model name, or key:<id>.")]
    generation: int
    note: str


class RedisHealth(BaseModel):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class QueueHealth(BaseModel):
    depth: int
    workers: int


class WorkerHealth(BaseModel):
    name: str
    queues: list[str]
    device: str
    models: list[str]


class CacheStats(BaseModel):
    entries: int
    hits: int
    misses: int
    hit_ratio: float


class Health(BaseModel):
    """GET /health: 200 (ok or degraded) while Redis answers, 503 (down) otherwise."""

    status: Literal["ok", "degraded", "down"]
    redis: RedisHealth
    queues: dict[str, QueueHealth]
    workers: list[WorkerHealth]
    providers: dict[str, dict[str, object]]
    models: list[ModelInfo]
    default_model: str | None = None
    cache: CacheStats


class Liveness(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    default_model: str | None = None
    queue: str | None = None
    workers: int | None = None


class KeyInfo(KeyLimits):
    """An API key as listings show it: never its secret nor its hash."""

    id: str
    name: str
    role: Role
    created_at: Timestamp


class KeyCreated(KeyInfo):
    key: Annotated[str, Field(description="The key itself: shown this once, never again.")]


class KeyList(BaseModel):
    data: list[KeyInfo]


class KeyRevoked(BaseModel):
    id: str
    revoked: bool


class UsageFigures(BaseModel):
    requests: int
    input_tokens: int
    cache_hits: Annotated[int, Field(description="Requests answered from the cache alone.")]


class UsageRow(UsageFigures):
    key: Annotated[str, Field(description="The key id (public: the open service's caller).")]
    date: Annotated[str, Field(description="UTC day, YYYY-MM-DD.")]
    model: str


class UsageReport(BaseModel):
    """GET /api/v1/usage."""

    object: Literal["usage"]
    from_: Annotated[str, Field(alias="from", description="First UTC day, YYYY-MM-DD.")]
    to: Annotated[str, Field(description="Last UTC day, YYYY-MM-DD.")]
    data: list[UsageRow]
    by_model: dict[str, UsageFigures]
    total: UsageFigures
