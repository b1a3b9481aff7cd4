"""One settings object for every process, read from the environment.

Names and defaults follow the deployment guide (shared/docs/seed-deployment-guide.md);
settings that the guide does not name follow its style (upper-case, unit in the name).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class SettingsError(ValueError):
    """A malformed setting; the message is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    # Service
    PORT: Annotated[int, Field(ge=1, le=65535, description="API port.")] = 3010
    HOST: Annotated[str, Field(description="API bind address.")] = "0.0.0.0"
    LOG_LEVEL: Annotated[LogLevel, Field(description="debug, info, warning, error.")] = "info"
    RUST_LOG: Annotated[
        str | None,
        Field(description="The guide's debug switch: debug, or embeddings=debug (common/logs)."),
    ] = None
    LOG_FORMAT: Annotated[
        Literal["console", "json"] | None,
        Field(description="Log lines: json, or console (readable); unset: console on a terminal."),
    ] = None
    WORKER_METRICS_PORT: Annotated[
        int, Field(ge=0, le=65535, description="A worker's Prometheus port (/metrics); 0: off.")
    ] = 0

    # Providers
    OLLAMA_URL: Annotated[str | None, Field(description="Ollama server; unset: off.")] = None
    OPENAI_API_KEY: Annotated[
        SecretStr | None, Field(description="OpenAI key; never logged or echoed.")
    ] = None
    DEFAULT_MODEL: Annotated[str, Field(description="Model used when a request names none.")] = (
        "all-MiniLM-L6-v2"
    )
    MODELS_FILE: Annotated[Path | None, Field(description="TOML model registry.")] = None
    OPENAI_BASE_URL: Annotated[
        str | None,
        Field(description="OpenAI-compatible server (TEI, vLLM, Infinity); unset: OpenAI."),
    ] = None
    OLLAMA_KEEP_ALIVE: Annotated[
        str, Field(description="How long Ollama keeps a model loaded after a call (5m, 1h, -1).")
    ] = "5m"
    PROVIDER_TIMEOUT_SECONDS: Annotated[
        float, Field(gt=0, description="One Ollama/OpenAI HTTP call; past it: 504.")
    ] = 30.0
    PROVIDER_MAX_RETRIES: Annotated[
        int, Field(ge=0, le=10, description="Retries after a 429, 5xx or connection error.")
    ] = 3
    PROVIDER_RETRY_BACKOFF_SECONDS: Annotated[
        float, Field(gt=0, description="First backoff; doubles per retry, plus jitter.")
    ] = 0.5
    PROVIDER_RETRY_MAX_WAIT_SECONDS: Annotated[
        float, Field(gt=0, description="Longest wait between tries; a longer Retry-After fails.")
    ] = 20.0
    PROVIDER_BREAKER_FAILURES: Annotated[
        int, Field(ge=1, description="Failed calls in a row that open a provider's breaker.")
    ] = 5
    PROVIDER_BREAKER_OPEN_SECONDS: Annotated[
        float, Field(gt=0, description="Fail fast this long, then let one trial call through.")
    ] = 30.0

    # Performance
    MAX_CONCURRENT_REQUESTS: Annotated[
        int, Field(ge=1, description="Sync calls waiting per API instance; past it: 429.")
    ] = 100
    WEB_CONCURRENCY: Annotated[
        int, Field(ge=1, le=64, description="gunicorn worker processes of the API.")
    ] = 2
    REQUEST_TIMEOUT_SECONDS: Annotated[
        float, Field(gt=0, description="How long a sync call waits; then 504 with a job id.")
    ] = 60.0
    BATCH_SIZE: Annotated[
        int, Field(ge=1, le=4096, description="Texts per forward pass (local models).")
    ] = 32
    BATCH_WAIT_MS: Annotated[
        float, Field(ge=0, le=1000, description="Longest wait for more requests to batch.")
    ] = 2.0
    TASK_EVENTS_FLUSH_MS: Annotated[
        float,
        Field(
            ge=0,
            le=5000,
            description="Longest a worker holds task events for Flower, to send them in one "
            "message; 0: Celery's own pace (a message per turn of its loop).",
        ),
    ] = 100.0
    MAX_BATCH_TOKENS: Annotated[
        int, Field(ge=16, description="Token budget of one collection and of one padded pass.")
    ] = 16384
    CACHE_SIZE: Annotated[
        int, Field(ge=0, description="Entries of each API process's in-memory LRU; 0: off.")
    ] = 1000
    MAX_REQUEST_BYTES: Annotated[
        int, Field(ge=1024, description="Largest JSON body; past it: 413.")
    ] = 16 * 1024 * 1024
    REQUEST_BODY_TIMEOUT_SECONDS: Annotated[
        float, Field(gt=0, description="A request body's time to arrive (plus MIN_RATE); then 408.")
    ] = 20.0
    REQUEST_BODY_MIN_RATE: Annotated[
        int, Field(ge=1, description="Bytes per second of body that earn it one more second.")
    ] = 500
    MAX_INPUTS: Annotated[
        int, Field(ge=1, le=100_000, description="Most texts in one request.")
    ] = 2048
    SYNC_GATHER_MS: Annotated[
        float,
        Field(
            ge=0,
            le=1000,
            description="Longest a sync call waits, while its model's last task is in flight, to "
            "be sent with others; 0: off.",
        ),
    ] = 10.0
    MAX_UPLOAD_BYTES: Annotated[
        int, Field(ge=1024, description="Largest index-job upload (streamed, never in memory).")
    ] = 8 * 1024**3
    MAX_DOCUMENT_BYTES: Annotated[
        int, Field(ge=1024, description="Largest index-job document (its line); past it: 413.")
    ] = 1024**2
    MAX_FILE_BYTES: Annotated[
        int, Field(ge=1024, description="Largest /v1/files upload (kept in Redis); past it: 413.")
    ] = 100 * 1024**2
    SINKS_FILE: Annotated[
        Path | None, Field(description="TOML file naming index jobs' result sinks; unset: none.")
    ] = None
    SINK_MAX_RETRIES: Annotated[
        int,
        Field(ge=0, le=20, description="Retries of a failing sink write; then the batch fails."),
    ] = 4
    SINK_RETRY_BACKOFF_SECONDS: Annotated[
        float, Field(gt=0, description="First wait before a sink write is retried; doubles.")
    ] = 1.0
    INDEX_CONCURRENCY: Annotated[
        int, Field(ge=1, le=256, description="Index batches a worker holds at once (bulk lane).")
    ] = 4
    BULK_PASS_TOKENS: Annotated[
        int,
        Field(ge=16, description="Padded tokens of one bulk pass: what a sync call may wait."),
    ] = 1024
    INDEX_BATCH_CHUNKS: Annotated[
        int, Field(ge=1, le=4096, description="Chunks per index-job task (whole documents).")
    ] = 64

    # Models and hardware
    MODEL_CACHE_DIR: Annotated[Path, Field(description="Where exported ONNX models are kept.")] = (
        Path.home() / ".cache" / "embeddings-service" / "models"
    )
    GPU_ENABLED: Annotated[
        bool, Field(description="Route local models to the gpu queue when a CUDA worker is up.")
    ] = True
    GPU_MEMORY_FRACTION: Annotated[
        float, Field(gt=0, le=1, description="Share of GPU memory a worker may take.")
    ] = 0.8
    CPU_STREAMS: Annotated[
        int,
        Field(
            ge=0,
            le=256,
            description="Passes an ONNX model runs at once on CPU, sharing out the worker's CPU "
            "threads (OMP_NUM_THREADS, else its cores), one at least each; 0: one per thread "
            "(the most texts per core), 1: one on them all (a lone short text's lowest latency).",
        ),
    ] = 0

    # Redis: broker, job state, results and cache
    REDIS_URL: Annotated[
        str, Field(description="Redis; `dev.py up` starts an embedded one when unset.")
    ] = "redis://localhost:6379/0"
    REDIS_TLS_CA_FILE: Annotated[
        Path | None, Field(description="CA file that verifies a rediss:// server; unset: the OS's.")
    ] = None
    REDIS_TLS_CERT_FILE: Annotated[
        Path | None, Field(description="Client certificate, for a rediss:// server that asks one.")
    ] = None
    REDIS_TLS_KEY_FILE: Annotated[
        Path | None, Field(description="The client certificate's key, unless in its own file.")
    ] = None
    CACHE_TTL_SECONDS: Annotated[int, Field(ge=1, description="Life of a cached vector.")] = 3600
    JOB_TTL_SECONDS: Annotated[
        int, Field(ge=60, description="Life of a job, its results, files and batches.")
    ] = 24 * 3600
    BROKER_VISIBILITY_TIMEOUT_SECONDS: Annotated[
        int, Field(ge=1, description="A dead worker's unacked tasks are redelivered after it.")
    ] = 1800
    WORKER_LOST_AFTER_SECONDS: Annotated[
        float,
        Field(ge=2, description="A worker silent this long is lost; its messages go back."),
    ] = 20.0
    REDIS_MAX_FILL_RATIO: Annotated[
        float, Field(gt=0, le=1, description="Past this share of maxmemory new work gets 507.")
    ] = 0.9
    REDIS_MAXMEMORY: Annotated[
        str,
        Field(
            pattern=r"^(\d+(b|kb|mb|gb)?|\d{1,2}%)$",
            description="maxmemory of the launcher's Redis: bytes, 512mb, 2gb, or a % of RAM.",
        ),
    ] = "25%"

    # Rate limiting, authentication and backpressure
    RATE_LIMIT_REQUESTS_PER_MINUTE: Annotated[
        int, Field(ge=1, description="Refill of each caller's token bucket.")
    ] = 1000
    RATE_LIMIT_BURST: Annotated[int, Field(ge=1, description="Size of the bucket.")] = 100
    AUTH_REQUIRED: Annotated[
        bool,
        Field(description="false: open until the first key is made (local use); then never."),
    ] = True
    AUTH_FAILURES_PER_MINUTE: Annotated[
        int,
        Field(ge=1, description="Refused keys per minute from one address; then 429 for it."),
    ] = 20
    CACHE_SCOPE: Annotated[
        Literal["key", "shared"],
        Field(description="key: each API key its own cache entries; shared: one for all."),
    ] = "key"
    MAX_QUEUE_DEPTH: Annotated[
        int, Field(ge=1, description="Messages waiting on a queue past which new work gets 503.")
    ] = 10_000
    MAX_QUEUED_BYTES: Annotated[
        int, Field(ge=1024, description="Bytes of tasks waiting on all queues; past it: 503.")
    ] = 512 * 1024**2
    STORAGE_BYTES_PER_KEY: Annotated[
        int,
        Field(ge=1024, description="Bytes one key may hold: its files and queued texts; 507."),
    ] = 256 * 1024**2

    def sync_slots_per_process(self) -> int:
        """MAX_CONCURRENT_REQUESTS shared among the API's gunicorn worker processes."""
        return max(1, self.MAX_CONCURRENT_REQUESTS // self.WEB_CONCURRENCY)

    @field_validator("LOG_LEVEL", "LOG_FORMAT", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("OLLAMA_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "LOG_FORMAT", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `OLLAMA_URL=` in a compose file means "off", like leaving it out.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE")
    @classmethod
    def _redis_tls_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if not str(info.data.get("REDIS_URL", "")).startswith("rediss://"):
            raise ValueError("needs a rediss:// REDIS_URL (TLS)")
        if info.field_name == "REDIS_TLS_KEY_FILE" and not info.data.get("REDIS_TLS_CERT_FILE"):
            raise ValueError("needs REDIS_TLS_CERT_FILE too")
        if not value.is_file():
            raise ValueError("no such file")
        return value


def masked_url(url: str) -> str:
    """`url` with its password replaced by ***, for anything shown or logged. The password
    ends at the last '@' (unescaped ones in it happen): this may mask more, never less."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}:***@{host}" if at and colon else url


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or "settings"
    value = first.get("input")
    if name == "REDIS_URL" and isinstance(value, str):
        value = masked_url(value)
    shown = "" if name == "OPENAI_API_KEY" or isinstance(value, dict) else f"={value!r}"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"invalid setting {name}{shown}: {first['msg']}{more}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment (overrides win); raise SettingsError with one line on bad input."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(_one_line(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def settings_table() -> str:
    """Every setting as a Markdown table row: name, default, meaning (README, `embeddings
    settings`)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    home = str(Path.home())
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else str(field.default).replace(home, "~")
        rows.append(f"| `{name}` | {f'`{default}`' if default else 'unset'} | "
                    f"{field.description} |")  # fmt: skip
    return "\n".join(rows)
