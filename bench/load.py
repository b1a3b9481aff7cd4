"""A bounded load run: 32 users for 60 s against the service started as the README starts
it (`embeddings up`: embedded Redis, gunicorn, a CPU worker, Flower), with locust.

    .venv/bin/python bench/load.py [--users 32] [--seconds 60] [--warmup 15]

Each user mixes sync calls of 1 and of 32 new texts, cached repeats, async jobs (submit,
then poll to the end) and small bulk index jobs (submit, poll, download). The service's
rate limits are raised for the run (every user calls from 127.0.0.1).

Prints p50/p95/p99 per route, the 5xx count, the jobs accepted and how many of them
reached succeeded, and the API's memory (gunicorn master + workers RSS) after the warm-up
and at the end. Writes bench/results/load-<timestamp>.json; exits 1 when a bar fails: any
5xx (or request without an answer), no job accepted, any accepted job that does not
succeed, or API memory at the end more than 10% above the warm figure.
"""

from __future__ import annotations

# locust patches the standard library with gevent on import: before anything else.
import locust  # isort: skip  # noqa: F401

import argparse
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

# Plain modules: imported after locust's patching, as everything else.
from cli import processes
from local_stack import RAISED_LIMITS, unreserved_port
from machine import children_of, tree_rss_mib
from report import Bar, at_least, at_most, finish
from suite import ROOT, positive, run

EMBEDDINGS = ROOT / ".venv" / "bin" / "embeddings"
READY_TIMEOUT_S = 240.0
JOB_TIMEOUT_S = 180.0
"""After the run, how long the accepted jobs still running get to finish."""
POLL_S = 0.1
MEMORY_BAR = 1.10
WORDS = [
    "embedding", "vector", "model", "token", "batch", "queue", "worker", "redis", "cache",
    "cosine", "search", "index", "document", "passage", "sentence", "meaning", "semantic",
    "retrieval", "query", "answer", "fast", "slow", "light", "river", "mountain", "city",
    "garden", "music", "window", "letter", "market", "winter", "summer", "coffee",
]  # fmt: skip
CACHED = [f"a cached sentence number {i} about {WORDS[i % len(WORDS)]}" for i in range(20)]


def text() -> str:
    """A new text each time (so it is embedded, not answered from the cache)."""
    return f"{random.getrandbits(64):x} " + " ".join(random.choices(WORDS, k=random.randint(6, 24)))


# What the run saw beyond locust's timings.
STATUSES: Counter[int] = Counter()
"""Every answer's status code (0: none came), warm-up included."""
ACCEPTED: dict[str, str] = {}
"""Every job accepted (202): status url -> kind."""
FINISHED: dict[str, str] = {}
"""status url -> the status it ended in."""


@events.request.add_listener
def _count(response: object = None, exception: object = None, **_: object) -> None:
    status = getattr(response, "status_code", None)
    STATUSES[status if isinstance(status, int) else 0] += 1


class ServiceUser(FastHttpUser):
    wait_time = between(0.05, 0.3)
    network_timeout = 120.0
    connection_timeout = 10.0

    def _post(self, path: str, body: object, name: str, **kw: object) -> object:
        return self.client.post(path, json=body, name=name, **kw)

    @task(4)
    def sync_one(self) -> None:
        self._post("/api/v1/embeddings", {"input": text()}, "POST /api/v1/embeddings (1)")

    @task(1)
    def sync_32(self) -> None:
        body = {"input": [text() for _ in range(32)]}
        self._post("/api/v1/embeddings", body, "POST /api/v1/embeddings (32)")

    @task(4)
    def cached(self) -> None:
        with self.client.post("/api/v1/embeddings", json={"input": random.choice(CACHED)},
                              name="POST /api/v1/embeddings (cached)",
                              catch_response=True) as response:  # fmt: skip
            if response.status_code == 200 and response.headers.get("X-Cache") != "hit":
                response.failure(f"expected a cache hit, got {response.headers.get('X-Cache')}")

    def _follow(self, response: object, kind: str, name: str) -> str | None:
        if getattr(response, "status_code", None) != 202:
            return None
        url = response.json()["status_url"]  # type: ignore[attr-defined]
        ACCEPTED[url] = kind
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            gevent.sleep(POLL_S)
            polled = self.client.get(url, name=name)
            if polled.status_code == 200 and polled.json()["status"] not in ("queued", "running"):
                FINISHED[url] = polled.json()["status"]
                return url
        return None

    @task(2)
    def async_job(self) -> None:
        body = {"input": [text() for _ in range(8)]}
        response = self._post("/api/v1/jobs", body, "POST /api/v1/jobs (8)")
        self._follow(response, "job", "GET /api/v1/jobs/{id}")

    @task(1)
    def index_job(self) -> None:
        docs = [{"id": f"d{i}", "text": " ".join(text() for _ in range(3))} for i in range(20)]
        response = self._post(
            "/api/v1/index-jobs", {"documents": docs}, "POST /api/v1/index-jobs (20)"
        )
        url = self._follow(response, "index", "GET /api/v1/index-jobs/{id}")
        if url and FINISHED[url] == "succeeded":
            rows = self.client.get(f"{url}/results", name="GET /api/v1/index-jobs/{id}/results")
            if rows.status_code == 200 and len(rows.text.splitlines()) < len(docs):
                FINISHED[url] = "incomplete results"


# ---------------------------------------------------------------- the service


def api_rss_mib(launcher: int) -> float:
    """The gunicorn master and its workers, summed."""
    master = next(p for p in children_of(launcher)
                  if b"gunicorn" in Path(f"/proc/{p}/cmdline").read_bytes())  # fmt: skip
    return tree_rss_mib(master)


class Service:
    """`embeddings up` on free ports in a temporary run directory; SIGINT stops it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="embeddings-load-"))
        self.port = unreserved_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.dir / "up.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded one
        env |= {"PORT": str(self.port), "HOST": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
        env |= RAISED_LIMITS  # every user calls from 127.0.0.1: one rate-limit bucket
        flower = str(unreserved_port())
        cmd = [str(EMBEDDINGS), "up", "--flower-port", flower, "--run-dir", str(self.dir)]
        self.process = processes.start(
            cmd, lambda: b"ready." in self.log.read_bytes(), READY_TIMEOUT_S, "embeddings up",
            self.log, cwd=ROOT, env=env,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        """The launcher's."""
        if self.process is None:
            raise RuntimeError("the service is not started")
        return self.process.pid

    def stop(self) -> int | None:
        if self.process is None:
            return None
        # SIGINT, as Ctrl-C: the launcher stops the rest.
        processes.stop(self.process, grace=90, sig=signal.SIGINT)
        return self.process.returncode


# ---------------------------------------------------------------- the run


def finish_jobs(url: str) -> None:
    """Poll every accepted job that the run left unfinished, to its end."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    for status_url in [u for u in ACCEPTED if u not in FINISHED]:
        while time.monotonic() < deadline:
            status = requests.get(url + status_url, timeout=30).json()["status"]
            if status not in ("queued", "running"):
                FINISHED[status_url] = status
                break
            time.sleep(0.5)


def route_lines(env: Environment, seconds: float) -> list[str]:
    """p50/p95/p99/max per route, the total and locust's errors."""
    head = f"{'route':42} {'count':>6} {'fail':>5} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}"
    lines = [f"{head}  (ms)"]
    for name, entry in sorted(env.stats.entries.items()):
        p = entry.get_response_time_percentile
        times = f"{p(0.5):7.0f} {p(0.95):7.0f} {p(0.99):7.0f} {entry.max_response_time:7.0f}"
        lines.append(f"{name[1]:>6} {name[0][:35]:35} {entry.num_requests:6d} "
                     f"{entry.num_failures:5d} {times}")  # fmt: skip
    total = env.stats.total
    lines.append(f"{'all':42} {total.num_requests:6d} {total.num_failures:5d}  "
                 f"{total.num_requests / seconds:.1f} requests/s")  # fmt: skip
    for error in env.stats.errors.values():
        lines.append(f"  error x{error.occurrences}: {error.method} {error.name}: {error.error}")
    return lines


def routes(env: Environment, seconds: float) -> dict[str, object]:
    """The route table's figures, for the JSON file."""
    out: dict[str, object] = {}
    for (name, method), entry in sorted(env.stats.entries.items()):
        p = entry.get_response_time_percentile
        out[f"{method} {name}"] = {
            "requests": entry.num_requests, "failures": entry.num_failures,
            "p50_ms": p(0.5), "p95_ms": p(0.95), "p99_ms": p(0.99),
            "max_ms": entry.max_response_time,
        }  # fmt: skip
    total = env.stats.total
    out["all"] = {"requests": total.num_requests, "failures": total.num_failures,
                  "requests_per_second": total.num_requests / seconds}  # fmt: skip
    return out


def jobs() -> tuple[Counter[str], Counter[str]]:
    """The jobs accepted, by kind, and their outcomes."""
    return Counter(ACCEPTED.values()), Counter(FINISHED.get(u, "unfinished") for u in ACCEPTED)


def outcome_lines(rss: tuple[float, float]) -> list[str]:
    """Status codes, jobs and their outcomes, and the API's memory."""
    kinds, outcomes = jobs()
    warm, end = rss
    return [
        f"status codes: {dict(sorted(STATUSES.items()))} (0: no answer)",
        f"jobs accepted: {dict(kinds)}; outcomes: {dict(outcomes)}",
        f"API memory (gunicorn master + workers RSS): {warm:.0f} MiB after the warm-up, "
        f"{end:.0f} MiB at the end ({end / warm - 1:+.1%})",
    ]


def bars(rss: tuple[float, float]) -> list[Bar]:
    """No 5xx and no request without an answer; jobs accepted, and every one succeeded;
    API memory at the end at most 10% above the warm figure."""
    server_errors = sum(n for s, n in STATUSES.items() if s >= 500)
    lost = sum(1 for url in ACCEPTED if FINISHED.get(url) != "succeeded")
    warm, end = rss
    growth = f"API memory at the end <= warm + {MEMORY_BAR - 1:.0%}"
    return [
        at_most("5xx answers", server_errors, 0, ""),
        at_most("requests without an answer", STATUSES.get(0, 0), 0, ""),
        at_least("jobs accepted", len(ACCEPTED), 1, ""),
        at_most(f"accepted jobs that did not succeed (of {len(ACCEPTED)})", lost, 0, ""),
        at_most(growth, 100 * (end / warm - 1), 100 * (MEMORY_BAR - 1), "%"),
    ]


def prime_cache(url: str) -> None:
    """The cached repeats' first sight."""
    with requests.Session() as session:
        for sentence in CACHED:
            session.post(f"{url}/api/v1/embeddings", json={"input": sentence}, timeout=60)


def run_load(
    service: Service, args: argparse.Namespace
) -> tuple[Environment, float, tuple[float, float]]:
    """Warm-up, then the measured run; (locust's environment, seconds, API RSS warm and
    at the end)."""
    launcher = service.pid
    env = Environment(user_classes=[ServiceUser], host=service.url, events=events)
    runner = env.create_local_runner()
    runner.start(args.users, spawn_rate=args.users)
    print(f"warm-up: {args.users} users for {args.warmup:g} s ...", flush=True)
    gevent.sleep(args.warmup)
    warm = api_rss_mib(launcher)
    env.stats.reset_all()  # timings of the measured run only; status codes of all
    print(f"measured run: {args.users} users for {args.seconds:g} s ...", flush=True)
    started = time.monotonic()
    gevent.sleep(args.seconds)
    end = api_rss_mib(launcher)
    elapsed = time.monotonic() - started
    runner.quit()
    finish_jobs(service.url)
    return env, elapsed, (warm, end)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=positive, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    return parser.parse_args(argv)


def measure(service: Service, args: argparse.Namespace) -> dict[str, Any]:
    """Start the service, run the load, stop it; the figures for the JSON file."""
    print(f"starting embeddings up (log: {service.log}) ...", flush=True)
    try:
        service.start()
        shown = ("redis ", "api ", "flower ", "ready.")
        lines = service.log.read_text(errors="replace").splitlines()
        print("\n".join(x for x in lines if x.startswith(shown)), flush=True)
        prime_cache(service.url)
        env, elapsed, rss = run_load(service, args)
        print("\n" + "\n".join(route_lines(env, elapsed)))
        print("\n" + "\n".join(outcome_lines(rss)))
    finally:
        code = service.stop()
        print(f"embeddings up stopped (exit {code})")
    kinds, outcomes = jobs()
    return {
        "routes": routes(env, elapsed),
        "statuses": {str(status): n for status, n in sorted(STATUSES.items())},
        "jobs_accepted": dict(kinds),
        "job_outcomes": dict(outcomes),
        "api_rss_mib": {"warm": rss[0], "end": rss[1]},
        "measured_seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = {"started": datetime.now().isoformat(timespec="seconds"), "users": args.users,
              "seconds": args.seconds, "warmup_seconds": args.warmup,
              "cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}  # fmt: skip
    service = Service()
    found = measure(service, args)
    rss = (found["api_rss_mib"]["warm"], found["api_rss_mib"]["end"])
    code = finish("load", {"config": config, **found}, bars(rss))
    if code:
        print(f"the service's logs stay in {service.dir}")
    else:
        shutil.rmtree(service.dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    run(main)
