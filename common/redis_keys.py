"""Every Redis key the service uses is named here."""

from __future__ import annotations

PREFIX = "emb"

WORKERS = f"{PREFIX}:workers"
"""Hash: worker name -> JSON heartbeat (queues, device, models, time)."""

WORKERS_HELD = f"{PREFIX}:workers:held"
"""Hash: worker name -> JSON {at, tags}: the kombu delivery tags it held at its last
heartbeat (workers/redelivery.py)."""


def job(job_id: str) -> str:
    """Hash: a job's state, metadata and (when done) its packed vectors."""
    return f"{PREFIX}:job:{job_id}"


def job_done(job_id: str) -> str:
    """List: gets one element when the job ends; a waiting API request BLPOPs it."""
    return f"{PREFIX}:job:{job_id}:done"


CACHE_GENERATION = f"{PREFIX}:cache:gen"
"""Integer bumped by DELETE /api/v1/cache: part of every cache entry's key."""

CACHE_EPOCH = f"{PREFIX}:cache:epoch"
"""Integer bumped by every clear, with the generation it bumps: generations a process read
at the epoch a request sees are still that request's generations."""

CACHE_STATS = f"{PREFIX}:cache:stats"
"""Hash: hits, misses (all API processes)."""

JOB_STATS = f"{PREFIX}:stats:jobs"
"""Hash kept by common/jobs.py's transitions: queued, running (jobs in that state now);
created, finished:<state> (jobs ever created, and ended as succeeded/failed/cancelled)."""


def cache_model_generation(model: str) -> str:
    """Integer bumped by DELETE /api/v1/cache?model=..."""
    return f"{PREFIX}:cache:gen:{model}"


def cache_scope_generation(scope: str) -> str:
    """Integer bumped by DELETE /api/v1/cache from a client key (or ?key=): that key's
    entries (CACHE_SCOPE=key)."""
    return f"{PREFIX}:cache:gen:scope:{scope}"


def cache_entry_prefix(generations: tuple[int, int, int]) -> str:
    """String: packed float32 vector, with CACHE_TTL_SECONDS. The generations: global,
    model, scope."""
    return f"{PREFIX}:cache:{'.'.join(map(str, generations))}:"


def batch_stats(model: str) -> str:
    """Hash: counters of the passes and collections the workers formed for a model."""
    return f"{PREFIX}:stats:batches:{model}"


def provider_state(provider: str) -> str:
    """Hash: what remote workers last saw of a provider (call outcome, Ollama's pulled models)."""
    return f"{PREFIX}:provider:{provider}"


def breaker(provider: str, part: str) -> str:
    """A provider's circuit breaker, shared by every worker and read by /health.

    failures: integer, failed calls in a row; open: set (with a TTL) while calls fail fast;
    trial: set while one worker's trial call tests a provider that was down.
    """
    return f"{PREFIX}:provider:{provider}:breaker:{part}"


def model_dimensions(model: str) -> str:
    """Integer: dimensions learned from a remote model's first answer (registry left them out)."""
    return f"{PREFIX}:model:{model}:dimensions"


def index_job(job_id: str) -> str:
    """Hash: an index job's state and counters (chunks/docs total, done, failed)."""
    return f"{PREFIX}:ix:{job_id}"


def index_job_part(job_id: str, part: str) -> str:
    """Per-job hashes keyed by batch number or document id.

    plan: batch -> JSON [[doc id, chunk, start, end], ...]; vectors: batch -> packed
    float32 rows in plan order; batch_failed: batch -> reason; failed: doc id -> reason;
    metadata: doc id -> JSON.
    """
    return f"{PREFIX}:ix:{job_id}:{part}"


def index_jobs_of(owner: str) -> str:
    """Sorted set: an owner's index job ids by creation time (ALL_OWNERS: everyone's)."""
    return f"{PREFIX}:ix-owner:{owner}"


def jobs_of(owner: str) -> str:
    """Sorted set: an owner's async job ids by creation time (ALL_OWNERS: everyone's)."""
    return f"{PREFIX}:job-owner:{owner}"


ALL_OWNERS = "*"
"""jobs_of(ALL_OWNERS), index_jobs_of(ALL_OWNERS): every owner's jobs, for admin keys;
never a key id."""


def openai_file(file_id: str) -> str:
    """Hash: an OpenAI-API file: `meta` (JSON) and `content` (bytes)."""
    return f"{PREFIX}:oa:file:{file_id}"


def openai_batch(batch_id: str) -> str:
    """Hash: an OpenAI-API batch: `meta` (JSON), `requests` lives in openai_batch_requests."""
    return f"{PREFIX}:oa:batch:{batch_id}"


def openai_batch_requests(batch_id: str) -> str:
    """Hash: custom_id -> JSON {encoding_format, dimensions, tokens} of each request line."""
    return f"{PREFIX}:oa:batch:{batch_id}:requests"


def openai_batches_of(owner: str) -> str:
    """Sorted set: an owner's batch ids by creation time."""
    return f"{PREFIX}:oa:batches:{owner}"


def held(bucket: str, part: str) -> str:
    """Bytes held in Redis (common/storage.py) by a bucket (`queued`, `owner:<id>`): part
    `bytes`, hash item -> bytes; `until`, sorted set item -> expiry; `total`, integer."""
    return f"{PREFIX}:held:{bucket}:{part}"


API_KEYS = f"{PREFIX}:apikeys"
"""Hash: key id -> JSON {id, name, created_at, role, hash (the SHA-256 of the secret),
and the key's optional limits (common/api_keys.KeyLimits)}."""

AUTH_ON = f"{PREFIX}:auth:on"
"""String: set when the first key is made and never removed (revoking keys leaves auth on)."""


def auth_failures(address: str) -> str:
    """Integer with a one-minute TTL: refused keys from a client address."""
    return f"{PREFIX}:authfail:{address}"


def usage_day(owner: str, day: str) -> str:
    """Hash: a key's usage on a UTC day (YYYY-MM-DD): requests, tokens, hits, and the same
    per model as r:<model>, t:<model>, h:<model>. Expires after common/usage.KEEP_DAYS."""
    return f"{PREFIX}:usage:{owner}:d:{day}"


def usage_month(owner: str, month: str) -> str:
    """Integer: a key's input tokens in a UTC month (YYYY-MM), for its monthly quota."""
    return f"{PREFIX}:usage:{owner}:m:{month}"


def usage_minute(owner: str, minute: int) -> str:
    """Integer (two-minute TTL): a key's input tokens in one minute (unix time // 60)."""
    return f"{PREFIX}:usage:{owner}:min:{minute}"


USAGE_OWNERS = f"{PREFIX}:usage:owners"
"""Set: every owner (key id, or `public`) with usage recorded."""


def rate_bucket(caller: str) -> str:
    """Hash: a caller's token bucket (tokens, at)."""
    return f"{PREFIX}:ratelimit:{caller}"


LEDGER = f"{PREFIX}:ledger"
"""Hash: Celery task id -> '<seq> <note JSON>' for each task sent and not yet started
(common/ledger.py)."""

LEDGER_TIMES = f"{PREFIX}:ledger:times"
"""Sorted set: the same task ids, scored by the time they were sent."""

LEDGER_SWEEP_LOCK = f"{PREFIX}:ledger:sweeping"
"""String with a TTL: the worker sweeping the ledger now."""


def ledger_sequence(queue: str) -> str:
    """Integer: tasks ever sent to the queue (each note's sequence number)."""
    return f"{PREFIX}:ledger:sent:{queue}"


def ledger_started(queue: str) -> str:
    """Integer: the highest sequence number of the queue whose task has started."""
    return f"{PREFIX}:ledger:started:{queue}"


KOMBU_UNACKED = "unacked"
"""kombu's Redis transport: hash of the messages workers hold (its `unacked_key`); each
queue is a list under the queue's own name."""

KOMBU_UNACKED_INDEX = "unacked_index"
"""kombu's Redis transport: sorted set of the same delivery tags, scored by the time the
message was taken (its `unacked_index_key`)."""
