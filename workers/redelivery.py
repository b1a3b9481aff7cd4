"""A lost worker's messages go back to their queues within a minute, not a visibility timeout.

kombu's Redis transport keeps each message a worker has taken and not yet acked in its
`unacked` hash (the time it was taken in `unacked_index`), and puts it back only after
the visibility timeout (BROKER_VISIBILITY_TIMEOUT_SECONDS, which must outlast the longest
task). So every worker also says, with each heartbeat, which of those messages it holds:
the delivery tags of the requests Celery has reserved for it. A message taken more than
WORKER_LOST_AFTER_SECONDS ago that no worker heard from since then holds belonged to a
worker that died (SIGKILL, OOM, a lost node) or stopped (SIGSTOP, a partition); a sweep
puts it at the front of its queue under a new delivery tag, so that the late ack of a
stopped worker that resumes cannot ack the new delivery. Such a worker's late writes are
fenced where they land (common/jobs.py moves only active jobs; common/index_jobs.py
stores only the batch attempt that holds the claim). The visibility timeout stays the
last resort.
"""

from __future__ import annotations

import json
import logging
import uuid

import redis
from celery.worker import state

from common import redis_keys

log = logging.getLogger(__name__)

SWEEP_PAGE = 500

# KEYS: kombu's unacked hash, its index, the destination queue. ARGV: tag, new payload.
# Nothing happens if the message was acked (or given back) since it was read.
_GIVE_BACK = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


def held_tags() -> list[str]:
    """The delivery tags of the messages this worker's Celery pool holds (reserved or
    running); its bulk lane's are workers/bulk_lane.held_tags()."""
    return sorted(
        str(request.message.delivery_tag)
        for request in list(state.reserved_requests)
        if request.message is not None
    )


def publish(client: redis.Redis, worker: str, tags: list[str], now: float) -> None:
    client.hset(redis_keys.WORKERS_HELD, worker, json.dumps({"at": now, "tags": tags}))


def orphans(client: redis.Redis, lost_after_s: float, now: float) -> list[bytes]:
    """Tags of messages taken over `lost_after_s` ago that no worker heard from since holds."""
    old = client.zrangebyscore(
        redis_keys.KOMBU_UNACKED_INDEX, "-inf", now - lost_after_s, 0, SWEEP_PAGE
    )
    if not old:
        return []
    held: set[bytes] = set()
    gone: list[bytes] = []
    for worker, raw in client.hgetall(redis_keys.WORKERS_HELD).items():
        beat = json.loads(raw)
        if beat["at"] >= now - lost_after_s:
            held.update(tag.encode() for tag in beat["tags"])
        elif beat["at"] < now - 10 * lost_after_s:
            gone.append(worker)
    if gone:
        client.hdel(redis_keys.WORKERS_HELD, *gone)
    return [tag for tag in old if tag not in held]


def give_back(client: redis.Redis, tag: bytes) -> str | None:
    """Put one unacked message back at the front of its queue; its queue, or None if it
    was acked meanwhile."""
    raw = client.hget(redis_keys.KOMBU_UNACKED, tag)
    if raw is None:
        return None
    payload, _exchange, routing_key = json.loads(raw)
    payload.setdefault("headers", {})["redelivered"] = True
    properties = payload.setdefault("properties", {})
    properties["delivery_tag"] = str(uuid.uuid4())
    properties.setdefault("delivery_info", {})["redelivered"] = True
    # Celery's queues here are direct: the routing key is the queue's name, no priorities.
    moved = client.eval(
        _GIVE_BACK, 3, redis_keys.KOMBU_UNACKED, redis_keys.KOMBU_UNACKED_INDEX, routing_key,
        tag, json.dumps(payload),
    )  # fmt: skip
    return routing_key if moved else None


def sweep(client: redis.Redis, lost_after_s: float, now: float) -> int:
    """Give back every message of a lost worker; returns how many."""
    given = 0
    for tag in orphans(client, lost_after_s, now):
        queue = give_back(client, tag)
        if queue is not None:
            given += 1
            log.warning(
                "message %s was held by a lost worker (no heartbeat for %gs): back on %s",
                tag.decode(), lost_after_s, queue, extra={"queue": queue},
            )  # fmt: skip
    return given
