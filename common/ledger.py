"""Tasks sent but not yet started: the net under the one gap of kombu's Redis transport.

A worker takes a message with BRPOP and records it as unacked a moment later; a worker
killed in between loses that message, and nothing would ever end its job. So the API
notes each task here, in the transaction that sends its message (common/broker.joined),
with a sequence number per queue, and the task removes its note when it starts: from then
on its message is unacked until the task is done, and kombu redelivers the messages of a
dead worker. Workers sweep the notes, one worker at a time: a note older than twice the
visibility timeout, overtaken in its queue (a later one has started), whose message is in
neither kombu's unacked set nor the queue, was lost; its job, or its index batch, then
fails with reason `worker_lost`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import redis
from pydantic import BaseModel
from redis.client import Pipeline

from common import redis_keys
from common.errors import WorkerLost

SWEEP_SECONDS = 30.0
"""Longest time between two sweeps (shorter when the visibility timeout is short)."""
SWEEP_BATCH = 200
QUEUE_PAGE = 500
LOST_REASON = WorkerLost.type
LOST_MESSAGE = (
    "the worker that took this task's message died before the task started (kombu's "
    "Redis transport loses such a message); send it again"
)


class Entry(BaseModel):
    """What a task carries of its note: its Celery task id and queue (its place in the
    queue stays in the note)."""

    id: str
    queue: str


class Note(BaseModel):
    """What a sweep needs to end the work of a lost message."""

    kind: Literal["embed", "index_batch"]
    queue: str
    job_id: str
    batch: int | None = None


# KEYS: notes hash, times zset, the queue's sequence. ARGV: id, now, note JSON.
_NOTE = """
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], seq .. ' ' .. ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return seq
"""

# KEYS: notes hash, times zset, the queue's highest started sequence. ARGV: id.
_STARTED = """
local note = redis.call('HGET', KEYS[1], ARGV[1])
if not note then return end
local seq = tonumber(string.match(note, '^%d+'))
if seq > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], seq)
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
"""


def note(pipe: Pipeline, work: Note) -> str:
    """Before its message, on the pipe that sends it: queue a task's note; the task's id,
    which its `Entry` carries."""
    task_id = str(uuid.uuid4())
    pipe.eval(
        _NOTE, 3, redis_keys.LEDGER, redis_keys.LEDGER_TIMES,
        redis_keys.ledger_sequence(work.queue), task_id, repr(time.time()),
        work.model_dump_json(),
    )  # fmt: skip
    return task_id


def started(client: redis.Redis, entry: Entry) -> None:
    """At the start of a task: its message is unacked now, so its note goes."""
    client.eval(
        _STARTED, 3, redis_keys.LEDGER, redis_keys.LEDGER_TIMES,
        redis_keys.ledger_started(entry.queue), entry.id,
    )  # fmt: skip


def _in_queue(client: redis.Redis, queue: str, task_id: bytes) -> bool:
    """Whether a message of the queue names the task id (kombu's headers are plain JSON)."""
    for start in range(0, int(client.llen(queue)), QUEUE_PAGE):
        page = client.lrange(queue, start, start + QUEUE_PAGE - 1)
        if any(task_id in message for message in page):
            return True
    return False


@contextmanager
def turn(client: redis.Redis, seconds: float) -> Iterator[bool]:
    """Whether this worker sweeps now: one sweep at a time over all workers. `seconds`:
    the longest a sweeper that died holds the turn."""
    mine = bool(client.set(redis_keys.LEDGER_SWEEP_LOCK, "1", nx=True, px=int(seconds * 1000)))
    try:
        yield mine
    finally:
        if mine:
            client.delete(redis_keys.LEDGER_SWEEP_LOCK)


def sweep(
    client: redis.Redis,
    lost_after_s: float,
    forget_after_s: float,
    end: Callable[[Note], None],
    now: float,
) -> int:
    """End the work of lost messages (see the module's docstring); returns how many.
    Notes older than `forget_after_s` (their jobs have expired) are dropped unswept."""
    expired = client.zrangebyscore(redis_keys.LEDGER_TIMES, "-inf", now - forget_after_s)
    if expired:
        client.hdel(redis_keys.LEDGER, *expired)
        client.zrem(redis_keys.LEDGER_TIMES, *expired)
    ids = client.zrangebyscore(redis_keys.LEDGER_TIMES, "-inf", now - lost_after_s, 0, SWEEP_BATCH)
    if not ids:
        return 0
    unacked: bytes | None = None
    lost = 0
    for task_id, raw in zip(ids, client.hmget(redis_keys.LEDGER, ids), strict=True):
        if raw is None:  # started meanwhile
            client.zrem(redis_keys.LEDGER_TIMES, task_id)
            continue
        seq, _, body = raw.partition(b" ")
        work = Note.model_validate_json(body)
        if int(seq) > int(client.get(redis_keys.ledger_started(work.queue)) or 0):
            continue  # nothing sent after it has started: it is still waiting
        if unacked is None:
            unacked = b"\n".join(client.hvals(redis_keys.KOMBU_UNACKED))
        if task_id in unacked or _in_queue(client, work.queue, task_id):
            continue
        end(work)
        client.hdel(redis_keys.LEDGER, task_id)
        client.zrem(redis_keys.LEDGER_TIMES, task_id)
        lost += 1
    return lost
