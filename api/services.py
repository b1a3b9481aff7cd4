"""The connections and stores one API process uses, built by the app factory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis
from celery import Celery
from flask import current_app

from common import presence
from common.cache import EmbeddingCache
from common.index_jobs import IndexJobStore
from common.jobs import JobStore
from common.queueing import make_celery
from common.redis_client import connect, tls_options
from common.registry import Registry, load_registry
from common.settings import Settings
from common.sinks import SinkConfig, load_sinks
from common.usage import UsageMeter

PRESENCE_CACHE_SECONDS = 1.0


@dataclass
class Services:
    settings: Settings
    registry: Registry
    redis: redis.Redis
    jobs: JobStore
    index_jobs: IndexJobStore
    cache: EmbeddingCache
    celery: Celery
    sinks: dict[str, SinkConfig]
    usage: UsageMeter
    _workers: tuple[float, list[presence.WorkerInfo]] = field(default=(0.0, []))

    @classmethod
    def build(cls, settings: Settings) -> Services:
        client = connect(
            settings.REDIS_URL,
            max_connections=settings.MAX_CONCURRENT_REQUESTS + 20,
            tls=tls_options(settings),
            wait=True,
        )
        return cls(
            settings=settings,
            registry=load_registry(settings),
            redis=client,
            jobs=JobStore(client, settings.JOB_TTL_SECONDS),
            index_jobs=IndexJobStore(client, settings.JOB_TTL_SECONDS),
            cache=EmbeddingCache(client, settings.CACHE_TTL_SECONDS, settings.CACHE_SIZE),
            celery=make_celery(settings, main="embeddings-api"),
            sinks=load_sinks(settings.SINKS_FILE),
            usage=UsageMeter(client),
        )

    def workers(self) -> list[presence.WorkerInfo]:
        """Online workers, read from Redis at most once a second per process."""
        read_at, workers = self._workers
        if time.monotonic() - read_at > PRESENCE_CACHE_SECONDS:
            workers = presence.online(self.redis)
            self._workers = (time.monotonic(), workers)
        return workers


def services() -> Services:
    return current_app.extensions["embeddings"]
