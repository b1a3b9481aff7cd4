"""An OpenAI (or OpenAI-compatible) stand-in speaking POST /v1/embeddings:

request  {"model", "input": str | [str] (at most 2048), "encoding_format"?: "float" |
          "base64", "dimensions"?, "user"?}, header "Authorization: Bearer <key>"
response {"object": "list", "data": [{"object": "embedding", "index", "embedding": [float] |
          "<base64 of little-endian float32>"}], "model", "usage": {"prompt_tokens",
          "total_tokens"}}
errors   {"error": {"message", "type", "param", "code"}}; 429 carries Retry-After.

Behaviours for /v1/embeddings: ok, 429, 500, hang, malformed, wrong_dim, reject (400:
context length), missing_model (404), leak_key (401 whose message repeats the key it got,
as a careless server might).
"""

from __future__ import annotations

import base64

from tests.stubs.server import Reply, Seen, StubServer, vector

DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
"""Dimensions of the stub's models; any other model answers 8."""
MAX_INPUTS = 2048


def error(status: int, message: str, kind: str, code: str | None = None, **headers: str) -> Reply:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply.json(status, body, **headers)


class OpenAIStub(StubServer):
    retry_after = "1"

    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key

    def answer(self, seen: Seen) -> Reply | None:
        if seen.method != "POST" or seen.path != "/v1/embeddings":
            return error(404, f"Invalid URL ({seen.method} {seen.path})", "invalid_request_error")
        sent_key = seen.headers.get("authorization", "").removeprefix("Bearer ")
        behaviour = self.next_behaviour()
        if behaviour == "leak_key" or sent_key != self.api_key:
            return error(
                401, f"Incorrect API key provided: {sent_key}.", "invalid_request_error",
                "invalid_api_key",
            )  # fmt: skip
        body = seen.body or {}
        model = body.get("model", "")
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if len(texts) > MAX_INPUTS:
            return error(
                400, f"'$.input' is invalid: at most {MAX_INPUTS} inputs", "invalid_request_error"
            )
        if behaviour == "429":
            return error(
                429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                **{"Retry-After": self.retry_after},
            )  # fmt: skip
        if behaviour == "500":
            return error(
                500, "The server had an error while processing your request.", "server_error"
            )
        if behaviour == "hang":
            return None
        if behaviour == "malformed":
            return Reply(
                200, b'{"object": "list", "data": [{"obje', {"Content-Type": "application/json"}
            )
        if behaviour == "reject":
            return error(
                400, "This model's maximum context length is 8192 tokens, however you "
                "requested 9000 tokens. Please reduce your prompt.", "invalid_request_error",
            )  # fmt: skip
        if behaviour == "missing_model":
            return error(
                404, f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error", "model_not_found",
            )  # fmt: skip
        dims = body.get("dimensions") or DIMENSIONS.get(model, 8)
        if behaviour == "wrong_dim":
            dims = 3
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            row = vector(text, dims)
            embedding = (
                base64.b64encode(row.astype("<f4").tobytes()).decode()
                if as_base64
                else [float(x) for x in row]
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(len(text) // 4 + 1 for text in texts)
        return Reply.json(200, {
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip
