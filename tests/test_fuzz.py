"""Property-based fuzzing of every documented operation, from the served /openapi.json
(schemathesis + hypothesis), in-process against the WSGI app with a real worker.

Each case must get no 5xx, a documented status code, a documented content type, a body
that matches the documented schema and the documented headers, within a bounded time.
Cases are valid (positive) and schema-violating (negative) requests; path ids are
sometimes those of a real job, so the found-and-finished branches are fuzzed too.

The default run is small and the same every time (derandomized). A longer, random run:
`python3 dev.py fuzz` (FUZZ_EXAMPLES per operation and mode, FUZZ_SEED to replay one).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from common.settings import Settings, load_settings
from tests.conftest import MODEL

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
"""Cases per operation and mode: 12 x 2 modes x every documented operation by default."""
SEED = os.environ.get("FUZZ_SEED")
RANDOM = "FUZZ_EXAMPLES" in os.environ or SEED is not None
REQUEST_TIMEOUT_SECONDS = 2
SLOW_SECONDS = REQUEST_TIMEOUT_SECONDS + 20.0
"""Longest a case may take (a sync call waits REQUEST_TIMEOUT_SECONDS, then answers 504)."""
CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance, response_headers_conformance,
]  # fmt: skip
UNFUZZED = {"POST /api/v1/keys"}
"""A key made on the session's Redis would turn auth on for every later test (it never
turns off again); tests/test_tenants.py covers the route."""
SHOWN_FAILURES = 3
"""Failures reported per operation and check (the first ones, with a curl to replay)."""


@pytest.fixture(scope="module")
def fuzz_app(settings: Settings, worker: None) -> Flask:
    overrides = {
        **settings.model_dump(),
        "REQUEST_TIMEOUT_SECONDS": REQUEST_TIMEOUT_SECONDS,
        "RATE_LIMIT_REQUESTS_PER_MINUTE": 10_000_000,
        "RATE_LIMIT_BURST": 10_000_000,
    }
    return create_app(load_settings(**overrides))


@pytest.fixture(scope="module")
def real_ids(fuzz_app: Flask) -> dict[str, str]:
    """A finished job and a finished index job, by the path their id goes in."""
    client = fuzz_app.test_client()
    job = client.post("/api/v1/jobs", json={"input": ["fuzz", "me"]}).get_json()
    docs = [{"id": "d1", "text": "one document"}, {"id": "d2", "text": "and another"}]
    index = client.post("/api/v1/index-jobs", json={"documents": docs, "model": MODEL})
    ids = {"/api/v1/jobs/": job["id"], "/api/v1/index-jobs/": index.get_json()["id"]}
    deadline = time.monotonic() + 60
    for url in (job["status_url"], index.get_json()["status_url"]):
        while client.get(url).get_json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    return ids


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def fail(self, label: str, kind: str, detail: str) -> None:
        shown = self.failures.setdefault((label, kind), [])
        if len(shown) < SHOWN_FAILURES:
            shown.append(detail)

    def report(self) -> str:
        lines = [f"{len(self.failures)} kind(s) of failure:"]
        for (label, kind), details in self.failures.items():
            lines.append(f"--- {label}: {kind}")
            lines.extend(d[:2000] for d in details)
        return "\n".join(lines)


def fuzz_operation(operation: Any, mode: GenerationMode, ids: dict[str, str], tally: Tally) -> None:
    label = operation.label
    real_id = next((v for k, v in ids.items() if operation.path == k + "{job_id}"
                    or operation.path.startswith(k + "{job_id}/")), None)  # fmt: skip

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
    )  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode), use_real_id=st.booleans())
    def run(case: Any, use_real_id: bool) -> None:
        if real_id and use_real_id and "job_id" in (case.path_parameters or {}):
            case.path_parameters["job_id"] = real_id
        started = time.monotonic()
        try:
            response = case.call()
        except Exception as error:  # the app raised through WSGI: as bad as a 500
            tally.fail(label, f"raised {type(error).__name__}", case.as_curl_command())
            return
        elapsed = time.monotonic() - started
        tally.statuses[(label, response.status_code)] += 1
        if elapsed > SLOW_SECONDS:
            tally.fail(label, "slow", f"{elapsed:.1f}s: {case.as_curl_command()}")
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as failure:
            kind = getattr(failure, "title", None) or type(failure).__name__
            tally.fail(label, kind, f"{failure}\n{case.as_curl_command()}")

    if SEED is not None:
        run = seed(int(SEED))(run)
    run()


@pytest.mark.timeout(120 + EXAMPLES * 30)
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_documented_operations_hold_under_fuzzing(
    fuzz_app: Flask, real_ids: dict[str, str], mode: GenerationMode
) -> None:
    validate(fuzz_app.test_client().get("/openapi.json").get_json())  # a valid 3.1 document
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if op.label not in UNFUZZED]  # fmt: skip
    assert len(operations) >= 10, [op.label for op in operations]
    tally = Tally()
    for operation in operations:
        fuzz_operation(operation, mode, real_ids, tally)
    cases = sum(tally.statuses.values())
    print(f"\n{mode.value}: {cases} cases over {len(operations)} operations")
    for (label, status), count in sorted(tally.statuses.items()):
        print(f"  {count:5d}  {status}  {label}")
    assert cases >= len(operations) * min(EXAMPLES, 3)
    assert not tally.failures, tally.report()
    health = fuzz_app.test_client().get("/health").get_json()
    assert health["status"] == "ok", health  # the worker is still there
