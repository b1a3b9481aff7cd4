"""OpenAPI: /openapi.json is a valid 3.1 document generated from the validating models,
it describes every route, real answers match it, and /docs serves Swagger UI locally."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from common.schemas import EmbeddingRequest
from tests.conftest import MODEL

NATIVE = re.compile(r"^/(api/v1/.*|health|livez|readyz|metrics)$")
"""The native API and monitoring routes, which api/openapi_native.py describes. The
compatible fronts (/v1/..., /api/embed, ...) register their own specs with
api.openapi.register; the second half of the route test covers them once they do."""


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def check(document: dict[str, Any], schema: str, body: object) -> None:
    """Validate a real answer against a component schema of the served document."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    errors = [e.message for e in Draft202012Validator(root).iter_errors(body)]
    assert not errors, f"{schema}: {errors}"


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_documented_path_is_routed(
    app: Flask, document: dict[str, Any]
) -> None:
    routed: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        routed.setdefault(path, set()).update(methods)
    documented = {path: set(ops) for path, ops in document["paths"].items()}
    missing = {p: m - documented.get(p, set()) for p, m in routed.items() if NATIVE.match(p)}
    assert not {p: m for p, m in missing.items() if m}, "routes without an OpenAPI spec"
    assert not {
        p: m - routed.get(p, set()) for p, m in documented.items() if m - routed.get(p, set())
    }
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            assert {"$ref": "#/components/parameters/RequestId"} in op["parameters"]


def test_request_schemas_are_the_validating_models(document: dict[str, Any]) -> None:
    served = document["components"]["schemas"]["EmbeddingRequest"]
    model = EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    assert served == model
    assert served["additionalProperties"] is False  # extra="forbid" is visible to clients
    body = document["paths"]["/api/v1/embeddings"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingRequest"
    }
    error = document["components"]["responses"]["Error400"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert set(document["components"]["schemas"]["ErrorDetail"]["required"]) == {"type", "message"}


def test_real_answers_match_the_documented_schemas(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    sync = client.post("/api/v1/embeddings", json={"input": ["a", "b"]})
    check(document, "EmbeddingResponse", sync.get_json())
    b64 = client.post("/api/v1/embeddings", json={"input": "a", "encoding_format": "base64"})
    check(document, "EmbeddingResponse", b64.get_json())
    accepted = client.post("/api/v1/jobs", json={"input": "a job"})
    check(document, "JobAccepted", accepted.get_json())
    deadline = time.monotonic() + 30
    while (job := client.get(accepted.get_json()["status_url"]).get_json())["status"] in (
        "queued", "running",
    ):  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.05)
    check(document, "JobResponse", job)
    docs = [{"id": "d1", "text": "one document " * 20}, {"id": 2, "text": "another"}]
    index = client.post("/api/v1/index-jobs", json={"documents": docs, "model": MODEL})
    assert index.status_code == 202, index.get_json()
    check(document, "IndexJobAccepted", index.get_json())
    check(document, "IndexJobDetail", client.get(index.get_json()["status_url"]).get_json())
    check(document, "IndexJobList", client.get("/api/v1/index-jobs?limit=2").get_json())
    check(document, "ModelList", client.get("/api/v1/models").get_json())
    check(document, "Health", client.get("/health").get_json())
    check(document, "Liveness", client.get("/livez").get_json())
    check(document, "Readiness", client.get("/readyz").get_json())
    check(document, "CacheCleared", client.delete(f"/api/v1/cache?model={MODEL}").get_json())
    for bad in (
        client.post("/api/v1/embeddings", json={"input": []}),
        client.post("/api/v1/embeddings", json={"input": "x", "model": "nope"}),
        client.get("/api/v1/jobs/job_nope"),
        client.get("/no/such/route"),
    ):
        assert bad.status_code >= 400
        check(document, "ErrorResponse", bad.get_json())


def test_docs_page_uses_local_swagger_ui(bare_client: FlaskClient) -> None:
    page = bare_client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "swagger-ui" in html
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
    srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(srcs) == 3
    for src in srcs:
        asset = bare_client.get(src)
        assert asset.status_code == 200, src
        assert len(asset.get_data()) > 100
    init = bare_client.get("/docs/init.js").get_data(as_text=True)
    assert '"/openapi.json"' in init
    assert bare_client.get("/docs/../api/app.py").status_code == 404
