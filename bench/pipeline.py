"""Pipeline: the service's own cost per request, with the model taken out (the `debug`
backend: tokenizer and limits, no forward pass) and with the real model, side by side.

    .venv/bin/python bench/pipeline.py [--seconds 10] [--index-docs 20000] [--repeat 2]

Per backend (debug, then onnx), Redis, the API (gunicorn, WEB_CONCURRENCY=2) and one CPU
worker (bench/local_stack.py), and `--repeat` times, each load from wrk (Debian's package;
the client must not be the bottleneck) for `--seconds`:

  - one new text per request (Cache-Control: no-store) at 16 and 64 connections, and at 1
    (the single-text p50 the real model is compared on);
  - 32 new texts per request at 4 connections, float and base64 answers;
  - cache hits: one primed text, at 16 connections;
  - an index job of `--index-docs` documents (`--real-index-docs` for the real model),
    passages of the corpus under new ids, 128-token chunks, no-store: chunks/s from the
    POST to the job seen succeeded;
  - once, on the debug stack, the floor: GET /v1/models at 16 connections, the lightest
    route through the same HTTP stack and hooks;
  - on the onnx stack, first, while it idles: the real model raw, in this process, on ONNX
    Runtime (the CPU worker's backend): a sequential single-text loop (texts/s and p50), the
    same texts 16 at a time in the passes the worker's batcher would plan (what batching
    alone gains here), and one at a time in as many passes at once as the CPU worker runs
    by default, one thread each (what its streams alone gain). The real model's bars
    compare the service with the raw loop of the same repeat: this machine's speed moves
    within a run.

For every load, the CPU each process took per request (API: the gunicorn master and its
workers; the worker; Redis), read from /proc. Writes bench/results/pipeline-<time>.json;
exits 1 when a bar fails (the issue's targets: bars are judged on the means).
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import requests

import wrk
from http_load import check, wait_succeeded
from local_stack import MANY_CLIENTS_ENV, MODEL, LocalService, model_spec
from machine import TICKS_PER_S, OthersCpu, tree_ticks, wait_quiet
from report import Bar, Figures, Row, at_least, at_most, comparisons, finish, others_note, table
from suite import DEFAULT_CORPUS, check_repeat, install_signal_handlers, positive, run
from workload import load_texts

BACKENDS = ("debug", "onnx")
RAW_GROUP = 16
"""Texts a raw pass group holds: the 16 one-text clients' texts, had they come at once."""
FLOOR_LABEL = "floor: GET /v1/models, 16 connections"
"""The lightest route through the same HTTP stack and hooks (auth with its rate-limit
round trip, logs, metrics): what any request costs before its own work."""
NO_STORE = {"Cache-Control": "no-store"}
JSON = {"Content-Type": "application/json"}
WRK_THREADS = 2
JOB_TIMEOUT_S = 3600.0
LOADS = {  # key: (label, connections, texts per request, encoding_format)
    "one_c16": ("1 text, 16 connections", 16, 1, "float"),
    "one_c64": ("1 text, 64 connections", 64, 1, "float"),
    "one_c1": ("1 text, 1 connection", 1, 1, "float"),
    "b32_float": ("32 texts, 4 connections, float", 4, 32, "float"),
    "b32_base64": ("32 texts, 4 connections, base64", 4, 32, "base64"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--seconds", type=positive, default=10, help="each wrk load")
    parser.add_argument("--index-docs", type=positive, default=20000)
    parser.add_argument("--real-index-docs", type=positive, default=2000)
    parser.add_argument("--raw-singles", type=positive, default=500)
    parser.add_argument("--repeat", type=positive, default=2)
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    return args


# --- raw --------------------------------------------------------------------------------


class RawOnnx:
    """The real model in this process on ONNX Runtime, one repeat at a time: one text at a
    time; RAW_GROUP texts at a time in the passes the worker's batcher would plan (what
    batching alone can gain on this machine); one text at a time in as many passes at once
    as the CPU worker runs by default, one thread each (what streams alone can gain)."""

    def __init__(self, texts: list[str], count: int) -> None:
        from common.settings import load_settings
        from common.tokenization import token_lengths
        from workers.providers.onnx import OnnxEncoder, cpu_threads

        spec, self.settings = model_spec(), load_settings()
        self.encoder = OnnxEncoder(spec, self.settings.MODEL_CACHE_DIR)
        self.streams = cpu_threads()  # the CPU worker's default streams
        self.one_thread = OnnxEncoder(spec, self.settings.MODEL_CACHE_DIR, threads=1)
        self.batch_size = spec.batch_size or self.settings.BATCH_SIZE
        self.singles = texts[:count]
        self.lengths = [min(n, spec.max_tokens)
                        for n in token_lengths(spec.tokenizer_file(), self.singles)]  # fmt: skip
        self.groups = [range(i, min(i + RAW_GROUP, count)) for i in range(0, count, RAW_GROUP)]
        for text in self.singles[:20]:
            self.encoder.embed([text])
            self.one_thread.embed([text])

    def measure(self, figures: Figures) -> None:
        from workers.batcher import plan_passes
        from workers.runtime import PASS_OVERHEAD_TOKENS

        count = len(self.singles)
        wait_quiet()  # the stack beside it idle: its start, or the last load, over
        with OthersCpu() as others:
            seconds = []
            for text in self.singles:
                started = time.perf_counter()
                self.encoder.embed([text])
                seconds.append(time.perf_counter() - started)
        figures.add("raw_single", "raw ONNX single text", "texts/s", count / sum(seconds),
                    others.percent)  # fmt: skip
        figures.percentiles("raw_single", "raw ONNX single text,", seconds, others.percent, (50,))
        with OthersCpu() as others:
            started = time.perf_counter()
            for group in self.groups:
                for indices in plan_passes([self.lengths[i] for i in group], self.batch_size,
                                           self.settings.MAX_BATCH_TOKENS,
                                           PASS_OVERHEAD_TOKENS["onnx"]):  # fmt: skip
                    self.encoder.embed([self.singles[group[i]] for i in indices])
            elapsed = time.perf_counter() - started
        figures.add("raw_grouped", f"raw ONNX, {RAW_GROUP} texts at a time in planned passes",
                    "texts/s", count / elapsed, others.percent)  # fmt: skip
        with ThreadPoolExecutor(self.streams) as pool, OthersCpu() as others:
            started = time.perf_counter()
            list(pool.map(self.one_thread.embed, ([text] for text in self.singles)))
            elapsed = time.perf_counter() - started
        figures.add("raw_streams", f"raw ONNX single texts, {self.streams} passes at once on "
                    "one thread each", "texts/s", count / elapsed, others.percent)  # fmt: skip


# --- the service ------------------------------------------------------------------------


class Cpu:
    """CPU ticks of the API (gunicorn tree), the worker and Redis, between two reads."""

    def __init__(self, stack: LocalService) -> None:
        assert stack.redis.process is not None
        self.pids = {
            "api": stack.api_pid, "worker": stack.worker_pid, "redis": stack.redis.process.pid,
        }  # fmt: skip
        self.start = self._read()

    def _read(self) -> dict[str, int]:
        return {name: tree_ticks(pid) for name, pid in self.pids.items()}

    def per_request_ms(self, requests_done: float) -> dict[str, float]:
        end = self._read()
        return {
            name: 1000 * (end[name] - self.start[name]) / TICKS_PER_S / max(requests_done, 1)
            for name in self.pids
        }


def add_cpu(figures: Figures, key: str, label: str, cpu: dict[str, float]) -> None:
    for name, ms in cpu.items():
        figures.add(f"{key}_cpu_{name}", f"{label}: {name} CPU per request", "ms", ms)


def wrk_load(
    stack: LocalService, key: str, label: str, script: Path, connections: int, texts: int,
    seconds: int, figures: Figures, path: str = "/api/v1/embeddings",
) -> None:  # fmt: skip
    url = f"{stack.url}{path}"
    cpu = Cpu(stack)
    with OthersCpu() as others:
        found = wrk.run(url, script, seconds, connections, WRK_THREADS)
    errors = found["non_2xx"] + found["socket_errors"]
    figures.add(key, label, "req/s", found["ok_per_second"], others.percent)
    figures.add(f"{key}_texts", f"{label}, texts", "texts/s", found["ok_per_second"] * texts)
    for point in (50, 95, 99):
        figures.add(f"{key}_p{point}", f"{label} p{point}", "ms", found[f"p{point}_ms"])
    figures.add(f"{key}_errors", f"{label}, errors", "", errors)
    add_cpu(figures, key, label, cpu.per_request_ms(found["requests"]))


def index_job(stack: LocalService, key: str, texts: list[str], docs: int, figures: Figures) -> None:
    """`docs` documents (passages under new ids), one NDJSON upload, timed to done."""
    stamp = time.time_ns()
    body = b"".join(
        orjson.dumps({"id": f"{stamp}-{i}", "text": texts[i % len(texts)]}) + b"\n"
        for i in range(docs)
    )
    cpu = Cpu(stack)
    with requests.Session() as session, OthersCpu() as others:
        started = time.perf_counter()
        answer = session.post(
            f"{stack.url}/api/v1/index-jobs",
            params={"max_tokens": 128, "overlap_tokens": 0},
            data=body,
            headers={"Content-Type": "application/x-ndjson", **NO_STORE},
            timeout=JOB_TIMEOUT_S,
        )
        job_id = orjson.loads(check(answer).content)["id"]
        job = wait_succeeded(
            session, f"{stack.url}/api/v1/index-jobs/{job_id}", JOB_TIMEOUT_S, (0.05, 0.05)
        )
        elapsed = time.perf_counter() - started
    chunks = job["chunks"]["done"]
    label = f"{key.split('_')[0]}: index job, {docs} documents"
    figures.add(key, f"{label} ({chunks} chunks)", "chunks/s", chunks / elapsed, others.percent)
    add_cpu(figures, key, f"{label}, per chunk", cpu.per_request_ms(chunks))


def cache_hits(stack: LocalService, folder: Path, seconds: int, figures: Figures, key: str) -> None:
    body = orjson.dumps({"model": MODEL, "input": "a text that is served from the cache"})
    for _ in range(4):  # both gunicorn processes, most likely, see it stored
        check(requests.post(f"{stack.url}/api/v1/embeddings", data=body, headers=JSON, timeout=60))
    script = wrk.same_body_script(folder, "hit", body, {})
    label = f"{key.split('_')[0]}: cache hits, 16 connections"
    wrk_load(stack, key, label, script, 16, 1, seconds, figures)


def run_backend(backend: str, texts: list[str], args: argparse.Namespace, figures: Figures) -> None:
    docs = args.index_docs if backend == "debug" else args.real_index_docs
    with LocalService(f"pipeline-{backend}", backend, MANY_CLIENTS_ENV) as stack:
        print(f"\n{backend}: {stack.describe()}", flush=True)
        folder = Path(tempfile.mkdtemp(prefix="wrk-", dir=stack.dir))
        scripts = {
            key: wrk.fresh_texts_script(
                folder, key, texts, per, {"model": MODEL, "encoding_format": fmt}, NO_STORE
            )
            for key, (_, _, per, fmt) in LOADS.items()
        }
        wrk.run(f"{stack.url}/api/v1/embeddings", scripts["b32_float"], 2, 4, WRK_THREADS)
        raw = RawOnnx(texts, args.raw_singles) if backend == "onnx" else None
        for number in range(1, args.repeat + 1):
            print(f"{backend}, repeat {number}/{args.repeat}", flush=True)
            if raw is not None:  # in the same minutes as the service's loads
                raw.measure(figures)
            for key, (label, connections, per, _) in LOADS.items():
                wrk_load(stack, f"{backend}_{key}", f"{backend}: {label}", scripts[key],
                         connections, per, args.seconds, figures)  # fmt: skip
            cache_hits(stack, folder, args.seconds, figures, f"{backend}_hits")
            if backend == BACKENDS[0]:
                wrk_load(stack, "floor", FLOOR_LABEL, wrk.get_script(folder, "floor"), 16, 1,
                         args.seconds, figures, path="/v1/models")  # fmt: skip
            index_job(stack, f"{backend}_index", texts, docs, figures)
        del raw
        gc.collect()


# --- report -----------------------------------------------------------------------------


def rows() -> list[Row]:
    out = [Row("raw_single"), Row("raw_single_p50"), Row("raw_grouped", "raw_single"),
           Row("raw_streams", "raw_single")]  # fmt: skip
    out += [Row("floor"), Row("floor_p50")]
    out += [Row(f"floor_cpu_{part}") for part in ("api", "redis")]
    for backend in BACKENDS:
        for key in (*LOADS, "hits", "index"):
            name = f"{backend}_{key}"
            out.append(Row(name))
            if key != "index":
                out += [Row(f"{name}_p50"), Row(f"{name}_p99")]
            out += [Row(f"{name}_cpu_{part}") for part in ("api", "worker", "redis")]
    out += [
        Row("onnx_one_c16_texts", "raw_single"),
        Row("onnx_one_c1_p50", "raw_single_p50", "diff"),
    ]
    return out


def bars(figures: Figures) -> list[Bar]:
    mean = figures.mean
    ratio16 = None
    if mean("onnx_one_c16_texts") and mean("raw_single"):
        ratio16 = mean("onnx_one_c16_texts") / mean("raw_single")  # type: ignore[operator]
    extra_p50 = None
    if mean("onnx_one_c1_p50") is not None and mean("raw_single_p50") is not None:
        extra_p50 = mean("onnx_one_c1_p50") - mean("raw_single_p50")  # type: ignore[operator]
    return [
        at_least("debug: 1 text, 16 connections", mean("debug_one_c16"), 1000, " req/s"),
        at_most("debug: 1 text, 16 connections, p99", mean("debug_one_c16_p99"), 100, " ms"),
        at_most("debug: 1 text, 16 connections, errors", mean("debug_one_c16_errors"), 0, ""),
        at_least("debug: 32 texts, float", mean("debug_b32_float_texts"), 6000, " texts/s"),
        at_least("debug: 32 texts, base64", mean("debug_b32_base64_texts"), 10000, " texts/s"),
        at_least("debug: index job", mean("debug_index"), 8000, " chunks/s"),
        at_least("real: 16 x 1 text against sequential encode", ratio16, 1.25, "x"),
        at_most("real: 16 x 1 text, p95", mean("onnx_one_c16_p95"), 250, " ms"),
        at_most("real: single-text p50 over in-process encode", extra_p50, 3, " ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    texts = load_texts(args.corpus, 4972)
    figures = Figures()
    for backend in BACKENDS:
        run_backend(backend, texts, args, figures)
    print("\n" + "\n".join([*table(figures, rows()), "", *others_note()]))
    config: dict[str, Any] = vars(args) | {
        "corpus": str(args.corpus), "when": f"{datetime.now():%Y-%m-%d %H:%M}",
        "cpus": os.cpu_count(), "env": MANY_CLIENTS_ENV,
    }  # fmt: skip
    data = {"config": config, "figures": figures.as_dict(),
            "comparisons": comparisons(figures, rows())}  # fmt: skip
    return finish("pipeline", data, bars(figures))


if __name__ == "__main__":
    run(main)
