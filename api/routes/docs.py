"""GET /openapi.json (the schema) and GET /docs (Swagger UI, served from local files).

The Swagger UI files come from the swagger-ui-bundle-v2 package: no CDN, so the page
works offline and behind strict egress rules. The page has no inline script.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata

from flask import Blueprint, Response, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

from api import openapi, openapi_native  # noqa: F401 (registers the native paths)
from api.render import json_response

bp = Blueprint("docs", __name__)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Embeddings service API</title>
  <link rel="stylesheet" href="{css}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script src="{init}"></script>
</body>
</html>
"""

INIT = """window.ui = SwaggerUIBundle({
  url: %s,
  dom_id: "#swagger-ui",
  deepLinking: true,
  displayRequestDuration: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""


@lru_cache(maxsize=1)
def _version() -> str:
    try:
        return metadata.version("embeddings-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return json_response(openapi.build(version=_version()))


@bp.get("/docs")
def docs_page() -> Response:
    def asset(name: str) -> str:
        return url_for("docs.docs_asset", asset=name)

    html = PAGE.format(
        css=asset("swagger-ui.css"),
        bundle=asset("swagger-ui-bundle.js"),
        init=url_for("docs.docs_init"),
    )
    return Response(html, mimetype="text/html")


@bp.get("/docs/init.js")
def docs_init() -> Response:
    url = url_for("docs.openapi_json")
    return Response(INIT % json.dumps(url), mimetype="text/javascript")


@bp.get("/docs/<path:asset>")
def docs_asset(asset: str) -> Response:
    """Swagger UI's files (send_from_directory refuses paths outside the folder)."""
    return send_from_directory(str(swagger_ui_path), asset, max_age=86400)
