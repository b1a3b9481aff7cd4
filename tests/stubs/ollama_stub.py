"""An Ollama stand-in speaking its documented API (docs/api.md in ollama/ollama):

POST /api/embed  {"model", "input": str | [str], "truncate"?, "options"?, "keep_alive"?,
                  "dimensions"?} -> {"model", "embeddings": [[float]], "total_duration",
                  "load_duration", "prompt_eval_count"}
GET  /api/tags   -> {"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}
Errors are {"error": "<text>"}; a model that is not pulled answers 404
{"error": "model \"<name>\" not found, try pulling it first"}.

Behaviours for /api/embed: ok, 429 (with Retry-After), 500, hang, malformed (truncated JSON),
wrong_dim (3-dimensional vectors), reject (400, input too long).
"""

from __future__ import annotations

from tests.stubs.server import Reply, Seen, StubServer, vector

DIMENSIONS = {"nomic-embed-text": 768, "mxbai-embed-large": 1024}
"""Dimensions of the stub's models; any other pulled model answers 16."""


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaStub(StubServer):
    retry_after = "1"

    def __init__(self, pulled: list[str]) -> None:
        super().__init__()
        self.pulled = [full_name(name) for name in pulled]

    def answer(self, seen: Seen) -> Reply | None:
        if seen.method == "GET" and seen.path == "/api/tags":
            return Reply.json(200, {"models": [self._tag(name) for name in self.pulled]})
        if seen.method != "POST" or seen.path != "/api/embed":
            return Reply(404, b"404 page not found", {"Content-Type": "text/plain"})
        body = seen.body or {}
        model = body.get("model", "")
        if full_name(model) not in self.pulled:
            return Reply.json(404, {"error": f'model "{model}" not found, try pulling it first'})
        behaviour = self.next_behaviour()
        if behaviour == "429":
            return Reply.json(
                429, {"error": "server busy, please try again"}, **{"Retry-After": self.retry_after}
            )
        if behaviour == "500":
            return Reply.json(500, {"error": "llama runner process has terminated: exit status 2"})
        if behaviour == "hang":
            return None
        if behaviour == "malformed":
            return Reply(
                200,
                b'{"model": "x", "embeddings": [[0.1, 0.2',
                {"Content-Type": "application/json"},
            )
        if behaviour == "reject":
            return Reply.json(400, {"error": "the input length exceeds the context length"})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") or DIMENSIONS.get(model.split(":")[0], 16)
        if behaviour == "wrong_dim":
            dims = 3
        rows = [[float(x) for x in vector(text, dims)] for text in texts]
        return Reply.json(200, {
            "model": model, "embeddings": rows, "total_duration": 14143917,
            "load_duration": 1019500, "prompt_eval_count": sum(len(t.split()) for t in texts),
        })  # fmt: skip

    @staticmethod
    def _tag(name: str) -> dict[str, object]:
        return {
            "name": name, "model": name, "modified_at": "2025-01-01T00:00:00.000000000Z",
            "size": 274302450, "digest": "0a109f422b47" + "0" * 52,
            "details": {"format": "gguf", "family": "nomic-bert", "families": ["nomic-bert"],
                        "parameter_size": "137M", "quantization_level": "F16"},
        }  # fmt: skip
