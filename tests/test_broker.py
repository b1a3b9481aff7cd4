"""Our kombu transport (common/broker.py): a message published inside `joined(pipe)` is
written by that pipeline when it runs, with what else it holds, and not before."""

from __future__ import annotations

import json
import uuid

import redis

from common import broker
from common.queueing import make_celery
from common.settings import Settings

TASK = "tests.nothing"


def test_a_joined_message_goes_out_when_its_pipeline_runs(settings: Settings) -> None:
    app = make_celery(settings)
    client = redis.Redis.from_url(settings.REDIS_URL)
    queue, marker = f"joined-{uuid.uuid4()}", f"joined-marker-{uuid.uuid4()}"
    try:
        pipe = client.pipeline()
        pipe.set(marker, "written")
        with broker.joined(pipe):
            app.send_task(TASK, args=[1], queue=queue, task_id="first")
        assert client.llen(queue) == 0 and client.get(marker) is None
        pipe.execute()
        assert client.get(marker) == b"written"
        message = json.loads(client.lindex(queue, 0))  # type: ignore[arg-type]
        assert message["headers"]["task"] == TASK and message["headers"]["id"] == "first"

        discarded = client.pipeline()
        with broker.joined(discarded):
            app.send_task(TASK, args=[2], queue=queue, task_id="never")
        discarded.reset()
        app.send_task(TASK, args=[3], queue=queue, task_id="outside")  # sent at once
        ids = [json.loads(m)["headers"]["id"] for m in client.lrange(queue, 0, -1)]
        assert sorted(ids) == ["first", "outside"]
    finally:
        client.delete(queue, marker)
        app.close()
