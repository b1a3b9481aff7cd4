"""Task events for Flower (workers/event_pacing.py): every task's events reach Celery's event
channel, packed several to a message rather than one message per turn of the worker's loop."""

from __future__ import annotations

import base64
import json
import time
import uuid

import redis
import requests

CALLS = 20


def events_of(message: bytes) -> list[dict[str, object]]:
    """The events in one of kombu's fanout messages (one event, or a list of them)."""
    envelope = json.loads(message)
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    found = json.loads(body)
    return found if isinstance(found, list) else [found]


def test_task_events_all_arrive_packed(live_api: str, redis_url: str) -> None:
    listener = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("*celeryev*")
    try:
        for i in range(CALLS):  # one at a time: each is a task of its own
            answer = requests.post(f"{live_api}/api/v1/embeddings", timeout=60,
                                   json={"input": f"event pacing {uuid.uuid4()} {i}"},
                                   headers={"Cache-Control": "no-store"})  # fmt: skip
            assert answer.status_code == 200
        messages: list[list[dict[str, object]]] = []
        succeeded: set[object] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(succeeded) < CALLS:
            message = listener.get_message(timeout=0.5)
            if message is None:
                continue
            events = [e for e in events_of(message["data"]) if str(e["type"]).startswith("task-")]
            if events:
                messages.append(events)
                succeeded |= {e["uuid"] for e in events if e["type"] == "task-succeeded"}
    finally:
        listener.close()
    assert len(succeeded) >= CALLS  # every call's task, seen done
    events = sum(len(pack) for pack in messages)
    assert events >= 2 * CALLS  # received or started, then succeeded, for each
    assert len(messages) <= events / 4, [len(pack) for pack in messages]
