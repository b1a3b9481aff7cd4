"""The service's error kinds. api/errors.py maps each to an HTTP status in one table."""

from __future__ import annotations


class ServiceError(Exception):
    """An error with a message fit for the client; `type` names its kind on the wire."""

    type = "internal_error"
    headers: dict[str, str] | None = None
    """Extra response headers (Retry-After, X-RateLimit-*)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, str | None]:
        return {"type": self.type, "message": self.message, "param": self.param}


class InvalidRequest(ServiceError):
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    type = "payload_too_large"


class Unauthorized(ServiceError):
    type = "authentication_error"


class Forbidden(ServiceError):
    """A valid key that may not do this: an admin route, or a model outside its list."""

    type = "permission_error"


class TooManyRequests(ServiceError):
    """Over the caller's rate limit, or this API instance is at its concurrency limit."""

    type = "rate_limit_exceeded"

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class NotFound(ServiceError):
    type = "not_found_error"


class ModelNotFound(NotFound):
    type = "model_not_found"

    def __init__(self, name: str, why: str = "") -> None:
        reason = f": {why}" if why else ""
        super().__init__(f"model {name!r} is not available{reason}", param="model")
        self.model = name


class JobNotFound(NotFound):
    type = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (unknown, expired, or not yours)", param="id")


class Conflict(ServiceError):
    type = "conflict"


class Unavailable(ServiceError):
    type = "service_unavailable"


class QueueFull(Unavailable):
    """The model's queue is deeper than MAX_QUEUE_DEPTH: refused now, not piled up."""

    type = "queue_full"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class InsufficientStorage(Unavailable):
    """Redis is too full to take new work: refused now rather than lost later."""

    type = "insufficient_storage"


class WorkerLost(Unavailable):
    """A job's message was lost with the worker that took it (common/ledger.py): send it
    again. Only ever a failed job's type."""

    type = "worker_lost"


class ProviderError(ServiceError):
    """A call to a remote provider (ollama, openai) that failed; the message starts with the
    provider's name. `retryable`: worth another try (429, 5xx, connection errors);
    `retry_after`: seconds the provider (or its open breaker) asks us to wait."""

    type = "upstream_error"

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable
        self.retry_after = retry_after


class UpstreamError(ProviderError):
    """The provider answered with an error (5xx) or an answer that cannot be used."""

    type = "upstream_error"


class ProviderUnavailable(ProviderError):
    """Not configured, unreachable, rate limiting us, or its circuit breaker is open."""

    type = "provider_unavailable"


class UpstreamTimeout(ProviderError):
    """The provider did not answer within PROVIDER_TIMEOUT_SECONDS."""

    type = "upstream_timeout"


class ProviderRejected(InvalidRequest):
    """The provider refused the input (its 400 or 422): the client's to fix."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider} rejected the input: {message}", param="input")
        self.provider = provider


class Timeout(ServiceError):
    """The wait ran out; the job goes on and can be polled."""

    type = "timeout"

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class DeadlineExceeded(Timeout):
    """The client's X-Request-Timeout passed before a worker took the job, which it then
    dropped. Only ever a failed job's type."""

    type = "deadline_exceeded"


class JobFailed(ServiceError):
    """A job the worker could not finish; `kind` and the message come from the worker."""

    type = "job_failed"

    def __init__(self, message: str, job_id: str, kind: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.kind = kind

    @classmethod
    def from_job(cls, job_id: str, error: dict[str, str]) -> JobFailed:
        return cls(error.get("message", "the job failed"), job_id, error.get("type", cls.type))

    def to_dict(self) -> dict[str, str | None]:
        return {"type": self.kind, "message": self.message, "param": None, "job_id": self.job_id}
