"""Where new work goes, and how it is sent: one path for sync calls, jobs and index
batches. `route` checks the provider (configured, breaker closed) and picks the queue (gpu
while a CUDA worker is up); `send` sends it by name (the API never imports workers), in one
transaction with its note in the ledger (common/ledger.py) and the job's record."""

from __future__ import annotations

from pydantic import BaseModel
from redis.client import Pipeline

from api.services import Services
from common import broker, errors, ledger, logs, providers
from common.breaker import CircuitBreaker
from common.queueing import QueueName
from common.registry import ModelSpec, Provider


def pick_queue(svc: Services, spec: ModelSpec) -> str:
    """Local models go to a GPU worker when one is enabled and online, else to the CPU."""
    if spec.provider is not Provider.LOCAL or spec.queue != "local":
        return spec.queue
    if svc.settings.GPU_ENABLED and any(
        QueueName.GPU in w.queues and w.device == "cuda" for w in svc.workers()
    ):
        return QueueName.GPU
    return QueueName.CPU


def check_provider(svc: Services, spec: ModelSpec) -> None:
    """Fail fast, queueing nothing, for a remote model whose provider is not configured or
    whose circuit breaker is open (the worker's breaker, read from Redis)."""
    if spec.provider is Provider.LOCAL:
        return
    providers.require_configured(svc.settings, spec)
    breaker = CircuitBreaker(
        svc.redis, spec.provider.value, svc.settings.PROVIDER_BREAKER_FAILURES
    ).state()
    if breaker.state == "open":
        raise breaker.open_error(spec.provider.value)


def too_deep(svc: Services, queue: str, depth: int) -> errors.QueueFull:
    """The refusal of new work while `queue` is deeper than MAX_QUEUE_DEPTH (checked where
    the work is admitted, api/storage.py, in the round trip that holds its bytes)."""
    return errors.QueueFull(
        f"the {queue!r} queue holds {depth} waiting tasks (limit "
        f"{svc.settings.MAX_QUEUE_DEPTH}); retry later or add workers",
        retry_after=5,
    )


def route(svc: Services, spec: ModelSpec) -> str:
    """The queue for new work of `spec`, or the error that refuses it now (its depth is
    checked where the work is admitted)."""
    check_provider(svc, spec)
    return pick_queue(svc, spec)


def send(
    svc: Services, name: str, task: BaseModel, work: ledger.Note, summary: str, pipe: Pipeline
) -> None:
    """Send the task by name to the note's queue, with its ledger note, in one run of `pipe`
    (a transaction) after what it already holds: the job's record, or the batch's plan.
    `summary` stands in for the task's arguments in logs and Flower.

    No declare: a message goes by its queue's name (Celery's default exchange), and workers
    declare what they consume; kombu's declare before every publish was ~100 µs of ~350."""
    task_id = ledger.note(pipe, work)
    payload = task.model_copy(update={"ledger": ledger.Entry(id=task_id, queue=work.queue)})
    with broker.joined(pipe):
        svc.celery.send_task(
            name, args=[payload.model_dump()], queue=work.queue, task_id=task_id, declare=[],
            **logs.send_options(summary),
        )  # fmt: skip
    pipe.execute()
