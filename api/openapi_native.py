"""OpenAPI specs of the native API (/api/v1/...) and the monitoring routes."""

from __future__ import annotations

from api.openapi import Body, Operation, Reply, path_param, query_param, register
from common.api_keys import KeyLimits, NewKey
from common.responses import (
    CacheCleared,
    EmbeddingResponse,
    Health,
    IndexJobAccepted,
    IndexJobDetail,
    IndexJobList,
    IndexJobRequest,
    IndexResultLine,
    JobAccepted,
    JobList,
    JobResponse,
    KeyCreated,
    KeyInfo,
    KeyList,
    KeyRevoked,
    Liveness,
    ModelList,
    Readiness,
    SinkList,
    UsageReport,
)
from common.schemas import Document, EmbeddingRequest, IndexJobOptions

CACHE_CONTROL = {"$ref": "#/components/parameters/CacheControl"}
JOB_ID = path_param("job_id", "The job id the submit answer gave.")
KEY_ID = path_param("key_id", "The key's id (the part after emb_).")
KEY_QUERY = query_param("key", {"type": "string"},
                        "Admin keys: another key's id, or all.")  # fmt: skip
PAGE = (
    query_param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "Jobs per page."),
    query_param("cursor", {"type": "string"}, "next_cursor of the previous page."),
    KEY_QUERY,
)  # fmt: skip
KEYS = "API keys"
EMBEDDINGS = "Embeddings"
JOBS = "Jobs"
INDEX = "Index jobs"
SERVICE = "Service"
MONITORING = "Monitoring"


def _upload_options() -> tuple[dict[str, object], ...]:
    """IndexJobOptions as query parameters (NDJSON and multipart uploads)."""
    fields = IndexJobOptions.model_fields
    return (
        query_param("model", {"type": "string"}, "Model name; DEFAULT_MODEL if absent."),
        query_param("max_tokens", {"type": "integer", "minimum": 8}, "Chunk size in tokens."),
        query_param("overlap_tokens", {"type": "integer", "minimum": 0}, "Chunk overlap."),
        query_param("normalize", {"type": "boolean", "default": True}, "Unit-length vectors."),
        query_param(
            "on_error",
            {"type": "string", "enum": ["fail", "skip"], "default": "fail"},
            fields["on_error"].description or "",
        ),
        query_param("sink", {"type": "string"}, fields["sink"].description or ""),
        query_param(
            "cache",
            {"type": "string", "enum": ["read", "write", "off"], "default": "read"},
            fields["cache"].description or "",
        ),
    )


register(
    Operation(
        "post", "/api/v1/embeddings", "Embed texts and wait for the vectors", EMBEDDINGS,
        operation_id="createEmbeddings",
        description="Answers from the cache when every text is there; otherwise a worker "
        "embeds the misses (batched with other requests) and the call waits up to "
        "REQUEST_TIMEOUT_SECONDS. Past that: 504 with the job id to poll.",
        bodies=(Body(EmbeddingRequest),),
        parameters=(CACHE_CONTROL,),
        responses={200: Reply("The vectors, in input order.", EmbeddingResponse,
                              headers=("X-Cache",))},
        errors=(400, 404, 409, 413, 415, 500, 502, 503, 504, 507),
    ),
    Operation(
        "post", "/api/v1/jobs", "Submit an embedding job", JOBS,
        operation_id="createJob",
        description="Answers 202 at once; poll status_url for the result.",
        bodies=(Body(EmbeddingRequest),),
        parameters=(CACHE_CONTROL,),
        responses={202: Reply("Queued.", JobAccepted, headers=("Location",))},
        errors=(400, 404, 413, 415, 503, 507),
    ),
    Operation(
        "get", "/api/v1/jobs", "List jobs, newest first", JOBS,
        operation_id="listJobs",
        description="Async jobs (not sync calls), without their vectors: GET a job for them.",
        parameters=PAGE,
        responses={200: Reply("A page of jobs.", JobList)},
        errors=(400, 403, 503),
    ),
    Operation(
        "get", "/api/v1/jobs/{job_id}", "A job's status, then its result", JOBS,
        operation_id="getJob",
        parameters=(JOB_ID,),
        responses={200: Reply("The job; `result` once succeeded, `error` once failed.",
                              JobResponse)},
        errors=(404, 503),
    ),
    Operation(
        "delete", "/api/v1/jobs/{job_id}", "Cancel a job", JOBS,
        operation_id="cancelJob",
        description="Cancelling a finished job changes nothing; the answer says its status.",
        parameters=(JOB_ID,),
        responses={200: Reply("The job after the cancel.", JobResponse)},
        errors=(404, 503),
    ),
    Operation(
        "post", "/api/v1/index-jobs", "Submit a bulk indexing job", INDEX,
        operation_id="createIndexJob",
        description="Documents are chunked by tokens, embedded in batches by the workers and "
        "kept for download. Send a JSON body, an NDJSON stream (one Document per line, "
        "options in the query) or a multipart form with the JSONL in `file`.",
        bodies=(
            Body(IndexJobRequest),
            Body(Document, "application/x-ndjson",
                 description="NDJSON: one Document per line."),
            Body(None, "multipart/form-data", {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "JSONL: one Document per line."},
                    "model": {"type": "string"},
                    "max_tokens": {"type": "integer"},
                    "overlap_tokens": {"type": "integer"},
                    "normalize": {"type": "boolean"},
                    "on_error": {"type": "string", "enum": ["fail", "skip"]},
                    "sink": {"type": "string"},
                    "cache": {"type": "string", "enum": ["read", "write", "off"]},
                },
            }),
        ),
        parameters=(CACHE_CONTROL, *_upload_options()),
        responses={202: Reply("Queued.", IndexJobAccepted, headers=("Location",))},
        errors=(400, 404, 409, 413, 415, 503, 507),
    ),
    Operation(
        "get", "/api/v1/index-jobs", "List index jobs, newest first", INDEX,
        operation_id="listIndexJobs",
        parameters=PAGE,
        responses={200: Reply("A page of jobs.", IndexJobList)},
        errors=(400, 403, 503),
    ),
    Operation(
        "get", "/api/v1/sinks", "The result sinks an index job may name", INDEX,
        operation_id="listSinks",
        description="Names and kinds only: paths and DSNs stay with the operator.",
        responses={200: Reply("The configured sinks.", SinkList)},
        errors=(503,),
    ),
    Operation(
        "get", "/api/v1/index-jobs/{job_id}", "An index job's progress", INDEX,
        operation_id="getIndexJob",
        parameters=(JOB_ID,),
        responses={200: Reply("Progress, rate, ETA and failed documents.", IndexJobDetail)},
        errors=(404, 503),
    ),
    Operation(
        "delete", "/api/v1/index-jobs/{job_id}", "Cancel an index job", INDEX,
        operation_id="cancelIndexJob",
        description="No new batches start; what is done stays downloadable. The job is "
        "`cancelling` until the batches already started end, then `cancelled`.",
        parameters=(JOB_ID,),
        responses={200: Reply("The job after the cancel.", IndexJobDetail)},
        errors=(404, 503),
    ),
    Operation(
        "get", "/api/v1/index-jobs/{job_id}/results", "Download an index job's vectors", INDEX,
        operation_id="getIndexJobResults",
        description="In a stable order (batch, then chunk), resumable with the cursor from "
        "X-Next-Cursor. While the job runs (or is cancelling) only the settled prefix is "
        "sent, and X-Results-Complete is false.",
        parameters=(
            JOB_ID,
            query_param("format", {"type": "string", "enum": ["ndjson", "npy", "npz"],
                                   "default": "ndjson"}, "Download format."),
            query_param("cursor", {"type": "integer", "minimum": 0, "default": 0},
                        "Batch number to start at."),
            query_param("limit", {"type": "integer", "minimum": 1}, "At most this many batches."),
        ),
        responses={
            200: Reply(
                "NDJSON lines (one per chunk), a float32 .npy matrix, or an .npz archive "
                "(embeddings, ids, chunks, starts, ends).",
                IndexResultLine, "application/x-ndjson",
                headers=("X-Next-Cursor", "X-Job-Status", "X-Results-Complete"),
                alternatives=(
                    Body(None, "application/octet-stream", {"type": "string",
                                                            "format": "binary"}),
                    Body(None, "application/zip", {"type": "string", "format": "binary"}),
                ),
            )
        },
        errors=(400, 404, 409, 503),
    ),
    Operation(
        "get", "/api/v1/models", "The models and whether a worker serves each now", SERVICE,
        operation_id="listModels",
        responses={200: Reply("The registry's enabled models.", ModelList)},
        errors=(503,),
    ),
    Operation(
        "delete", "/api/v1/cache", "Clear the embedding cache", SERVICE,
        operation_id="clearCache",
        description="O(1): bumps a generation that is part of every cache key; every API "
        "process sees it at once and Redis reclaims old entries as their TTLs expire. A "
        "client key clears its own entries (CACHE_SCOPE=key); an admin key everything, one "
        "model's or one key's.",
        parameters=(
            query_param("model", {"type": "string"}, "Only this model's entries (admin keys)."),
            query_param("key", {"type": "string"}, "Only this key's entries (admin keys)."),
        ),
        responses={200: Reply("Cleared.", CacheCleared)},
        errors=(400, 403, 404, 503),
    ),
    Operation(
        "get", "/health", "Service health: Redis, queues, workers, providers, models, cache",
        MONITORING,
        operation_id="getHealth",
        responses={
            200: Reply("ok, or degraded when no worker can serve the default model.", Health),
            503: Reply("down: Redis does not answer.", Health),
        },
    ),
    Operation(
        "get", "/livez", "Liveness probe (no Redis call)", MONITORING,
        operation_id="getLiveness",
        responses={200: Reply("The process answers.", Liveness)},
    ),
    Operation(
        "get", "/readyz", "Readiness probe", MONITORING,
        operation_id="getReadiness",
        description="Ready when Redis answers and a worker consumes the default model's queue.",
        responses={
            200: Reply("Ready.", Readiness),
            503: Reply("Not ready; `reason` says why.", Readiness, headers=("Retry-After",)),
        },
    ),
    Operation(
        "get", "/metrics", "Prometheus metrics", MONITORING,
        operation_id="getMetrics",
        description="Prometheus text format: requests, durations, errors, tokens, cache, "
        "queue depth, jobs by state. Worker figures are on each worker's own port.",
        responses={200: Reply("Prometheus exposition.", None, "text/plain",
                              {"type": "string"})},
    ),
)  # fmt: skip

register(
    Operation(
        "post", "/api/v1/keys", "Create an API key (admin keys)", KEYS,
        operation_id="createKey",
        description="The answer holds the key itself, once; Redis keeps only its hash.",
        bodies=(Body(NewKey),),
        responses={201: Reply("The new key.", KeyCreated)},
        errors=(400, 401, 403, 413, 415, 503),
    ),
    Operation(
        "get", "/api/v1/keys", "List API keys (admin keys)", KEYS,
        operation_id="listKeys",
        responses={200: Reply("Every key, oldest first; never a secret.", KeyList)},
        errors=(401, 403, 503),
    ),
    Operation(
        "patch", "/api/v1/keys/{key_id}", "Change a key's limits (admin keys)", KEYS,
        operation_id="updateKey",
        description="Sets the fields given; null clears a limit.",
        bodies=(Body(KeyLimits),),
        parameters=(KEY_ID,),
        responses={200: Reply("The key after the change.", KeyInfo)},
        errors=(400, 401, 403, 404, 413, 415, 503),
    ),
    Operation(
        "delete", "/api/v1/keys/{key_id}", "Revoke a key (admin keys)", KEYS,
        operation_id="revokeKey",
        description="Its calls get 401 from now on. Auth stays on, even with no key left.",
        parameters=(KEY_ID,),
        responses={200: Reply("Revoked.", KeyRevoked)},
        errors=(401, 403, 404, 503),
    ),
    Operation(
        "get", "/api/v1/usage", "Requests, input tokens and cache hits by day and model", KEYS,
        operation_id="getUsage",
        description="The caller's own key; an admin key may name another (key=<id>) or all.",
        parameters=(
            query_param("from", {"type": "string", "format": "date"},
                        "First UTC day, YYYY-MM-DD (default: 29 days before `to`)."),
            query_param("to", {"type": "string", "format": "date"},
                        "Last UTC day, YYYY-MM-DD (default: today)."),
            KEY_QUERY,
        ),
        responses={200: Reply("One row per key, day and model.", UsageReport)},
        errors=(400, 401, 403, 503),
    ),
)  # fmt: skip
