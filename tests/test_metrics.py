"""Prometheus metrics: the API's /metrics (two gunicorn processes, summed) and the worker's
own port move as requests, errors, cache hits, jobs and batches happen. Read with the
Prometheus text parser."""

from __future__ import annotations

import sys
import time
import types
import uuid
from collections.abc import Iterator

import pytest
import redis
import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from common.jobs import JobStore
from tests.conftest import MODEL
from tests.helpers import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
EMBED = "/api/v1/embeddings"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str) -> Samples:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def embed(url: str, texts: list[str], **extra: object) -> requests.Response:
    return requests.post(f"{url}{EMBED}", json={"input": texts, **extra}, timeout=60)


def test_api_metrics_follow_requests_errors_cache_and_jobs(live_api: str) -> None:
    before = scrape(live_api)
    text = f"metrics probe {uuid.uuid4()}"
    first, second = embed(live_api, [text]), embed(live_api, [text])
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    tokens = first.json()["usage"]["prompt_tokens"]
    assert embed(live_api, []).status_code == 400
    assert embed(live_api, ["x"], model="no-such-model").status_code == 404
    fresh = f"metrics probe {uuid.uuid4()}"
    job = requests.post(f"{live_api}/api/v1/jobs", json={"input": [text, fresh]}, timeout=10)
    assert job.status_code == 202
    deadline = time.monotonic() + 30
    while requests.get(live_api + job.json()["status_url"], timeout=10).json()["status"] != (
        "succeeded"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    # Two gunicorn processes answered: every scrape, whichever process takes it, sums both.
    scrapes = [scrape(live_api) for _ in range(4)]
    ok = {"model": MODEL, "provider": "local", "endpoint": EMBED}
    for after in scrapes:

        def delta(name: str, after: Samples = after, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("embedding_requests_total", **ok, status="200") == 2
        assert delta("embedding_duration_seconds_count", **ok) == 2
        assert delta("embedding_tokens_total", **ok) == 2 * tokens
        assert delta("embedding_inputs_total", **ok) == 2
        bad = {"model": "", "provider": "", "endpoint": EMBED}
        assert delta("embedding_requests_total", **bad, status="400") == 1
        assert delta("embedding_requests_total", **bad, status="404") == 1
        none = {"model": "", "provider": ""}
        assert delta("embedding_errors_total", **none, reason="invalid_request_error") == 1
        assert delta("embedding_errors_total", **none, reason="model_not_found") == 1
        assert delta("embedding_cache_hits_total") >= 2  # the second call, and the job's text
        assert delta("embedding_cache_misses_total") >= 2  # the first call, the job's new text
        assert delta("embedding_jobs_created_total") == 2
        assert delta("embedding_jobs_finished_total", state="succeeded") == 2
        assert value(after, "cache_size") >= 1
        assert value(after, "embedding_redis_up") == 1
        for queue in ("cpu", "gpu", "remote"):
            assert ("embedding_queue_depth", frozenset({("queue", queue)})) in after
        assert value(after, "embedding_workers", queue="cpu") >= 1
    # Multiprocess mode: only the summed files, not one process's default collectors.
    assert "python_gc_objects_collected_total" not in names(scrapes[0])


def test_jobs_by_state_follow_the_transitions(live_api: str, redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), 600)

    def jobs() -> tuple[float, float, float]:
        now = scrape(live_api)
        return (
            value(now, "embedding_jobs", state="queued"),
            value(now, "embedding_jobs", state="running"),
            value(now, "embedding_jobs_finished_total", state="cancelled"),
        )

    queued, running, cancelled = jobs()
    job_id = store.create(MODEL, "nowhere", 1, 1, {}, "public")  # a queue no worker reads
    assert jobs() == (queued + 1, running, cancelled)
    store.start(job_id)
    assert jobs() == (queued, running + 1, cancelled)
    store.start(job_id)  # a redelivered task: still one running job
    assert jobs() == (queued, running + 1, cancelled)
    assert store.cancel(job_id)
    assert jobs() == (queued, running, cancelled + 1)
    assert not store.cancel(job_id)  # terminal: nothing moves again
    assert jobs() == (queued, running, cancelled + 1)


def test_worker_port_shows_batches_queue_and_compute_time(
    live_api: str, worker_metrics_port: int
) -> None:
    worker = f"http://127.0.0.1:{worker_metrics_port}"
    before = scrape(worker)
    texts = [f"batch probe {uuid.uuid4()} {'word ' * n}" for n in range(5)]
    assert embed(live_api, texts, model=MODEL).status_code == 200
    task = {"task": "embeddings.embed", "model": MODEL, "queue": "cpu"}
    compute = "embedding_task_compute_seconds_count"
    # The task's own figures are recorded after its result is (Celery's task_postrun),
    # so the answer can reach the client a moment before they show.
    after = wait_until(
        lambda: scrape(worker),
        lambda now: value(now, compute, **task) > value(before, compute, **task),
        timeout=10,
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("embedding_batch_size_count", model=MODEL) >= 1
    assert delta("embedding_batch_size_sum", model=MODEL) >= len(texts)
    assert delta("embedding_batch_padding_ratio_count", model=MODEL) >= 1
    assert delta("embedding_forward_tokens_total", model=MODEL, kind="real") > 0
    assert delta("embedding_task_queued_seconds_count", **task) == 1
    assert delta("embedding_task_compute_seconds_count", **task) == 1
    ok = {"task": "embeddings.embed", "model": MODEL, "provider": "local", "outcome": "ok"}
    assert delta("embedding_tasks_total", **ok) == 1
    assert delta("embedding_task_tokens_total", model=MODEL, provider="local") > 0
    info = [labels for name, labels in after if name == "embedding_worker_info"]
    assert any(dict(labels)["worker"].startswith("test@") for labels in info)


def test_in_process_app_uses_the_default_registry(bare_client: FlaskClient) -> None:
    bare_client.post(EMBED, json={"input": ""})
    response = bare_client.get("/metrics")
    assert response.status_code == 200
    samples = parse(response.get_data(as_text=True))
    bad = {"model": "", "provider": "", "endpoint": EMBED, "status": "400"}
    assert value(samples, "embedding_requests_total", **bad) >= 1
    assert "embedding_queue_depth" in names(samples)


def test_redis_memory_against_its_maxmemory(bare_client: FlaskClient, redis_url: str) -> None:
    """What the Redis-near-maxmemory alert reads: used_memory and maxmemory, from INFO."""
    client = redis.Redis.from_url(redis_url)
    before = client.config_get("maxmemory")["maxmemory"]
    client.config_set("maxmemory", str(8 * 2**30))  # far above what the tests fill
    try:
        samples = parse(bare_client.get("/metrics").get_data(as_text=True))
    finally:
        client.config_set("maxmemory", before)
    assert value(samples, "embedding_redis_memory_max_bytes") == 8 * 2**30
    used = value(samples, "embedding_redis_memory_used_bytes")
    assert 0 < used < 8 * 2**30
    assert abs(used - client.info("memory")["used_memory"]) < 16 * 2**20


class _FakeCuda:
    def __init__(self, initialised: bool) -> None:
        self.initialised = initialised

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialised

    def current_device(self) -> int:
        return 0

    def mem_get_info(self, _: int) -> tuple[int, int]:
        return 30 * 2**30, 80 * 2**30

    def memory_reserved(self, _: int) -> int:
        return 2 * 2**30

    def memory_allocated(self, _: int) -> int:
        return 2**30

    def utilization(self, _: int) -> int:
        return 37


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    torch = types.SimpleNamespace(cuda=_FakeCuda(initialised=False))
    monkeypatch.setitem(sys.modules, "torch", torch)
    yield torch


def test_gpu_gauges_only_once_cuda_is_initialised(fake_torch: types.SimpleNamespace) -> None:
    from workers.metrics import GpuCollector

    assert list(GpuCollector().collect()) == []
    fake_torch.cuda.initialised = True
    got = {family.name: family.samples[0].value for family in GpuCollector().collect()}
    assert got == {
        "embedding_gpu_memory_total_bytes": 80 * 2**30,
        "embedding_gpu_memory_used_bytes": 50 * 2**30,
        "embedding_gpu_memory_reserved_bytes": 2 * 2**30,
        "embedding_gpu_memory_allocated_bytes": 2**30,
        "embedding_gpu_utilization_ratio": 0.37,
    }
