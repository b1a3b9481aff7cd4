"""A batch's output and error files, streamed from its index job's results.

Output lines follow the job's stored batches, then plan order: one per request that
succeeded. Error lines: one per request that failed. Nothing is kept in Redis; each
download renders its lines again, a few batches at a time (api/index_results.py). A file's
size is counted by rendering it once per API process: a result file exists only once its
job has ended, so its lines never change.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby

import numpy as np
import orjson

from api.fronts.batch_store import BatchStore, ResultFile, file_object
from api.index_results import RedisSource
from common import dimensions
from common.index_jobs import IndexJob, IndexJobStore
from common.lru import LRU
from common.vectors import to_base64

MAX_FAILURES = 10**6
FILENAMES = {"output": "output.jsonl", "error": "errors.jsonl"}
_SIZES: LRU[str, int] = LRU(4096)
"""Result files' sizes by id, so that asking a file's size again (client.files.retrieve)
costs no second render of what may be a large output."""


def _line(custom_id: str, body: dict | None, error: dict | None) -> bytes:
    response = None if body is None else {"status_code": 200, "request_id": custom_id,
                                          "body": body}  # fmt: skip
    line = {"id": "batch_req_" + custom_id, "custom_id": custom_id, "response": response,
            "error": error}  # fmt: skip
    return orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _body(model: str, vectors: np.ndarray, detail: dict) -> dict:
    vectors = dimensions.cut(vectors, detail.get("dimensions"))
    as_base64 = detail.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i, "embedding": to_base64(v) if as_base64 else v}
            for i, v in enumerate(vectors)]  # fmt: skip
    tokens = detail.get("tokens", 0)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def _output(jobs: IndexJobStore, batches: BatchStore, batch_id: str, job: IndexJob
            ) -> Iterator[bytes]:  # fmt: skip
    source = RedisSource(jobs, job.id, job.dimensions)
    for rows, _, matrix in source.windows(jobs.stored_batches(job.id)):
        runs = [(str(doc), len(list(run))) for doc, run in groupby(row[0] for row in rows)]
        details = batches.requests(batch_id, [custom_id for custom_id, _ in runs])
        lines, start = [], 0
        for (custom_id, count), detail in zip(runs, details, strict=True):
            body = _body(job.model, matrix[start : start + count], detail)
            lines.append(_line(custom_id, body, None))
            start += count
        yield b"".join(lines)


def _errors(jobs: IndexJobStore, job: IndexJob) -> Iterator[bytes]:
    yield b"".join(
        _line(failed["id"], None, {"code": "embedding_failed", "message": failed["reason"]})
        for failed in jobs.failures(job.id, limit=MAX_FAILURES)
    )


def lines(jobs: IndexJobStore, batches: BatchStore, file: ResultFile, job: IndexJob
          ) -> Iterator[bytes]:  # fmt: skip
    """The file's content, in pieces."""
    if file.kind == "error":
        return _errors(jobs, job)
    return _output(jobs, batches, file.batch_id, job)


def meta(jobs: IndexJobStore, batches: BatchStore, file: ResultFile, job: IndexJob
         ) -> dict[str, object]:  # fmt: skip
    """The file's object; its size is counted by rendering its lines, once."""
    size = _SIZES.get(file.id)
    if size is None:
        size = sum(len(piece) for piece in lines(jobs, batches, file, job))
        _SIZES.put_many([(file.id, size)])
    ended, expires = int(job.finished_at or job.created_at), int(job.created_at) + jobs.ttl
    return file_object(file.id, size, ended, expires, FILENAMES[file.kind], "batch_output")
