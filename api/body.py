"""Reading a JSON request body strictly: size, content type, UTF-8 and syntax."""

from __future__ import annotations

import orjson
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from common.errors import InvalidRequest


def json_body() -> object:
    """The decoded body; 413 past MAX_CONTENT_LENGTH (Flask), 415 or 400 otherwise."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    data = request.get_data(cache=False)
    # Flask stops a chunked body (no Content-Length) at the limit without a word: more
    # behind it is a body too large, not a truncated one.
    if len(data) == request.max_content_length and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    if not data:
        raise InvalidRequest("the request body is empty", param="body")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"malformed JSON: {error}", param="body") from None
