"""Whether a launch is ready, judged on its own processes only."""

from __future__ import annotations

from collections.abc import Collection

import redis
import requests

from common import presence


def ready(api_url: str, client: redis.Redis, worker_pids: Collection[int]) -> bool:
    """The API at `api_url` reports ok, and lists the workers that run as `worker_pids`
    (their heartbeats in Redis, at `client`, carry their pids and names)."""
    try:
        names = {info.pid: info.name for info in presence.online(client)}
        health = requests.get(f"{api_url}/health", timeout=2).json()
    except (redis.RedisError, requests.RequestException, ValueError):
        return False
    if not isinstance(health, dict) or health.get("status") != "ok":
        return False
    listed = {w.get("name") for w in health.get("workers", []) if isinstance(w, dict)}
    return all(pid in names and names[pid] in listed for pid in worker_pids)
