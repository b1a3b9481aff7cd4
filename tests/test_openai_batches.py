"""OpenAI's Batch API with the official SDK: files, batches, output and error files."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import openai
import orjson
import pytest
import redis
import requests
from flask import Flask

from common import redis_keys
from common.index_jobs import IndexJob, IndexJobStore
from tests.conftest import MODEL
from tests.helpers import wait_until


def jsonl(lines: list[dict]) -> io.BytesIO:
    return io.BytesIO(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")


def line(custom_id: str, **body: object) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": MODEL, **body}}  # fmt: skip


@pytest.fixture(scope="module")
def client(live_api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_api}/v1", api_key="unused", max_retries=0)


def wait(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    deadline = time.monotonic() + 120
    while (batch := client.batches.retrieve(batch_id)).status in (
        "validating",
        "in_progress",
        "finalizing",
        "cancelling",
    ):
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
    return batch  # fmt: skip


def held_client(app: Flask) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://held")
    return openai.OpenAI(base_url="http://held/v1", api_key="x", http_client=http)


def record(client: redis.Redis, batch_id: str) -> dict:
    """The batch's record in Redis, as the API keeps it."""
    return orjson.loads(client.hget(redis_keys.openai_batch(batch_id), "meta"))


def batch_keys(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every file and batch key of the Batch API, serialized."""
    return {key: client.dump(key) for key in client.scan_iter(f"{redis_keys.PREFIX}:oa:*")}


def test_a_batch_runs_to_an_output_file_matched_by_custom_id(
    client: openai.OpenAI, live_api: str
) -> None:
    requests_ = [
        line("one", input="first text"),
        line("two", input=["second text", "third text"], encoding_format="base64"),
        line("three", input="fourth text", encoding_format="float", dimensions=384),
    ]
    uploaded = client.files.create(file=("batch.jsonl", jsonl(requests_)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
        metadata={"run": "test"},
    )  # fmt: skip
    assert batch.status in ("in_progress", "completed")
    done = wait(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.total == 3 and done.request_counts.completed == 3
    assert done.metadata == {"run": "test"} and done.error_file_id is None
    lines = client.files.content(done.output_file_id).text.splitlines()
    answers = {x["custom_id"]: x for x in map(orjson.loads, lines)}
    assert set(answers) == {"one", "two", "three"}
    assert all(a["response"]["status_code"] == 200 for a in answers.values())
    native = requests.post(
        f"{live_api}/api/v1/embeddings",
        json={"input": ["first text", "second text", "third text", "fourth text"]}, timeout=60,
    ).json()["data"]  # fmt: skip
    two = answers["two"]["response"]["body"]["data"]
    decoded = np.frombuffer(__import__("base64").b64decode(two[1]["embedding"]), "<f4")
    np.testing.assert_allclose(decoded, native[2]["embedding"], atol=1e-6)
    one = answers["one"]["response"]["body"]
    np.testing.assert_allclose(one["data"][0]["embedding"], native[0]["embedding"], atol=1e-6)
    assert one["usage"]["prompt_tokens"] > 0
    assert client.batches.list(limit=1).data[0].id == done.id


def test_reading_a_finished_batch_and_its_output_writes_nothing(
    client: openai.OpenAI, redis_url: str
) -> None:
    """The output is neither built nor kept when a GET sees the job has ended: the batch
    reads its job's status, and the file's lines are read from the job's results."""
    r = redis.Redis.from_url(redis_url)
    requests_ = [line(f"r{i}", input=[f"text {i}", f"more {i}"]) for i in range(40)]
    uploaded = client.files.create(file=("b.jsonl", jsonl(requests_)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings",
                                  completion_window="24h")  # fmt: skip
    store = IndexJobStore(r, 600)
    job_id = record(r, batch.id)["job_id"]
    wait_until(lambda: store.get(job_id), lambda job: job.status.terminal, timeout=120)
    before = batch_keys(r)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 40
    assert done.completed_at and done.finalizing_at and done.output_file_id
    content = client.files.content(done.output_file_id).content
    assert batch_keys(r) == before
    answers = [orjson.loads(x) for x in content.splitlines()]
    assert [a["custom_id"] for a in answers] == [f"r{i}" for i in range(40)]
    assert all(len(a["response"]["body"]["data"]) == 2 for a in answers)
    meta = client.files.retrieve(done.output_file_id)
    assert (meta.bytes, meta.filename, meta.purpose) == (len(content), "output.jsonl",
                                                         "batch_output")  # fmt: skip


def test_failed_requests_go_to_the_error_file(held_app: Flask, redis_url: str) -> None:
    """No worker serves `held`: the job's batch is failed here, as a worker fails it."""
    client = held_client(held_app)
    r = redis.Redis.from_url(redis_url)
    lines = [{**line(f"r{i}"), "body": {"model": "held", "input": f"text {i}"}}
             for i in range(3)]  # fmt: skip
    uploaded = client.files.create(file=("held.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    reserved = record(r, batch.id)
    with pytest.raises(openai.NotFoundError):  # no such file while the job runs
        client.files.retrieve(reserved["error_file_id"])
    store = IndexJobStore(r, 600)
    store.begin(reserved["job_id"], 0, "attempt")
    store.fail_batch(reserved["job_id"], 0, "the model broke", "attempt")
    job: IndexJob = store.get(reserved["job_id"])
    done = client.batches.retrieve(batch.id)
    assert (done.status, done.output_file_id) == ("completed", None)
    assert done.completed_at == int(job.finished_at or 0)
    assert done.request_counts.completed == 0 and done.request_counts.failed == 3
    assert done.error_file_id == reserved["error_file_id"]
    content = client.files.content(done.error_file_id).content
    assert sorted(map(orjson.loads, content.splitlines()), key=lambda x: x["custom_id"]) == [
        {"id": f"batch_req_r{i}", "custom_id": f"r{i}", "response": None,
         "error": {"code": "embedding_failed", "message": "the model broke"}}
        for i in range(3)
    ]  # fmt: skip
    assert client.files.retrieve(done.error_file_id).bytes == len(content)
    # The size is counted once: with the job's failures taken away, a second read of the
    # size renders nothing again (a large output would cost a full render each time).
    r.delete(redis_keys.index_job_part(reserved["job_id"], "failed"))
    assert client.files.content(done.error_file_id).content == b""
    assert client.files.retrieve(done.error_file_id).bytes == len(content)
    assert client.files.delete(done.error_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.error_file_id)


def test_a_malformed_file_fails_the_batch_with_line_errors(client: openai.OpenAI) -> None:
    bad = jsonl([line("ok", input="fine"), {"custom_id": "x", "method": "GET", "url": "/v1/x"},
                 line("ok", input="duplicate id"), line("empty", input="")])  # fmt: skip
    uploaded = client.files.create(file=("bad.jsonl", bad), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.status == "failed"
    assert [e.line for e in batch.errors.data] == [2, 3, 4]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="24h")  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_cancel(held_app: Flask) -> None:
    client = held_client(held_app)
    lines = [{**line(f"r{i}", input=f"text {i}"), "body": {"model": "held", "input": "x"}}
             for i in range(3)]  # fmt: skip
    uploaded = client.files.create(file=("held.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert client.batches.retrieve(batch.id).status == "in_progress"
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    final = wait(client, batch.id)
    assert final.status == "cancelled" and final.cancelled_at
    assert final.request_counts.completed == 0 and final.output_file_id is None
