"""The GPU path, proved on a CUDA machine: a worker on the gpu queue running the model in
float16, within GPU_MEMORY_FRACTION, its passes cut by the token budget, side by side with
raw encode on the same GPU.

    python bench/gpu.py [--limit 2000] [--singles 800] [--fraction 0.25] [--batch-size 256]

Needs CUDA: exits 2 without it, unless --allow-cpu (a dry run of this script on a CPU,
where the worker falls back to the CPU and the GPU checks are skipped). Raw first, in this
process: SentenceTransformer on the GPU in float32 and in float16, encode of the whole list
(batch 32, and --batch-size), and sequential single-text encode. The raw model is released
before the service starts. Then Redis, the API and one worker on the gpu (and cpu) queues,
with GPU_ENABLED=true, GPU_MEMORY_FRACTION=--fraction and BATCH_SIZE=--batch-size, and:

  - checks: the worker's heartbeat says cuda, its log says float16, a job's task went to
    the gpu queue, and the GPU memory its /metrics report stays within the fraction;
  - all passages as one async job: texts/s, and the lowest cosine against raw float32;
  - 16 clients x 1 passage and 4 clients x 32 passages (no-store): texts/s, p50, p95;
  - the passes the worker formed in each (texts and padded tokens per pass, histogram).

Every figure runs --repeat times (at least 2). Writes bench/results/gpu-<timestamp>.json;
exits 1 when a check fails. bench/gpu_carry.py prepares what the lent GPU machine lacks.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import requests

import raw_encode
from batches import BatchLog
from cli.redis_server import free_port
from clients import NO_STORE, async_job, run_clients, warm_up
from common import redis_keys
from local_stack import MANY_CLIENTS_ENV, MODEL, LocalService
from report import Bar, Figures, Row, finish, table
from suite import DEFAULT_CORPUS, check_repeat, install_signal_handlers, positive, run
from workload import chunks, load_texts

METRIC = re.compile(r"^embedding_gpu_memory_(\w+)_bytes\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
MIN_COSINE = 0.999


@dataclass
class Run:
    args: argparse.Namespace
    texts: list[str]
    singles: list[str]
    figures: Figures = field(default_factory=Figures)
    batches: BatchLog = field(default_factory=BatchLog)
    checks: list[Bar] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool | None) -> None:
        """A yes/no check; None: does not apply here (a CPU dry run)."""
        self.checks.append(Bar(name, None if ok is None else float(ok), 1, "", ok))


def raw_figures(run: Run) -> np.ndarray:
    """The raw GPU figures, --repeat times; returns the float32 vectors (unit length)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = raw_encode.load_model(device)
    reference = np.empty(0)
    args, figures, texts, singles = run.args, run.figures, run.texts, run.singles
    for precision in ("float32", "float16") if device == "cuda" else ("float32",):
        if precision == "float16":
            model.half()
        else:
            model.float()  # the carried weights are float16
        raw_encode.warm_up(model, texts, singles)
        for number in range(1, args.repeat + 1):
            print(f"raw {precision} on {device}, repeat {number}/{args.repeat}", flush=True)
            rate, vectors = raw_encode.encode_whole(model, texts)
            figures.add(
                f"raw_{precision}", f"raw {precision}, whole list, batch 32", "texts/s", rate
            )
            if precision == "float32":
                reference = vectors
            big = raw_encode.encode_whole(model, texts, args.batch_size)[0]
            label = f"raw {precision}, whole list, batch {args.batch_size}"
            figures.add(f"raw_{precision}_big", label, "texts/s", big)
        seconds = raw_encode.single_latencies(model, singles)
        figures.add(f"raw_{precision}_single", f"raw {precision}, single text", "texts/s",
                    len(singles) / sum(seconds))  # fmt: skip
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return raw_encode.normalized(reference)


def worker_record(stack: LocalService) -> dict[str, Any]:
    for raw in stack.client.hvals(redis_keys.WORKERS):
        info = json.loads(raw)
        if info.get("pid") == stack.worker_pid:
            return info
    raise RuntimeError("the worker's heartbeat is missing")


def loaded_precision(stack: LocalService) -> str | None:
    """The precision the worker's "loaded model" log line names."""
    for log in stack.dir.glob("worker-*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("{") and '"loaded model' in line:
                return json.loads(line).get("precision")
    return None


def job_queue(stack: LocalService) -> str:
    """The queue the API picked for a one-text job (read from the job's hash)."""
    body = orjson.dumps({"model": MODEL, "input": "which queue?"})
    answer = requests.post(f"{stack.url}/api/v1/jobs", data=body, headers=NO_STORE, timeout=30)
    job_id = answer.json()["id"]
    return (stack.client.hget(redis_keys.job(job_id), "queue") or b"").decode()


def gpu_memory(metrics_url: str) -> dict[str, float]:
    """The worker's embedding_gpu_memory_*_bytes (total, used, reserved, allocated)."""
    text = requests.get(metrics_url, timeout=10).text
    return {name: float(value) for name, value in METRIC.findall(text)}


def service_figures(run: Run, reference: np.ndarray) -> None:
    args, figures, batches, texts = run.args, run.figures, run.batches, run.texts
    one_each = [[text] for text in run.singles]
    metrics_port = free_port()
    env = MANY_CLIENTS_ENV | {
        "GPU_ENABLED": "true",
        "GPU_MEMORY_FRACTION": str(args.fraction),
        "BATCH_SIZE": str(args.batch_size),
        "WORKER_METRICS_PORT": str(metrics_port),
    }
    with LocalService("gpu", env=env, queue="gpu,cpu") as stack:
        print(stack.describe(), flush=True)
        info = worker_record(stack)
        on_gpu = info["device"] == "cuda"
        run.check("the worker's device is cuda", on_gpu or None)
        precision = loaded_precision(stack)
        run.check("the worker's model runs in float16", precision == "float16" if on_gpu else None)
        warm_up(stack.url, texts)
        queue = job_queue(stack)
        run.check("jobs go to the gpu queue", queue == "gpu" if on_gpu else None)
        run.notes |= {"worker": info, "precision": precision, "job_queue": queue}
        lowest = 1.0

        def job() -> None:
            nonlocal lowest
            elapsed, vectors = async_job(stack.url, texts)
            figures.add("job", "one async job, all passages", "texts/s", len(texts) / elapsed)
            lowest = min(lowest, raw_encode.min_cosine(vectors, reference))

        def clients(key: str, label: str, bodies: list[list[str]], count: int) -> None:
            took, latencies = run_clients(stack.url, bodies, count)
            figures.add(key, label, "texts/s", sum(len(b) for b in bodies) / took)
            figures.percentiles(key, f"{label},", latencies, None, (50, 95))

        singles = "16 clients x 1 passage"
        many = "4 clients x 32 passages"
        for number in range(1, args.repeat + 1):
            print(f"service, repeat {number}/{args.repeat}", flush=True)
            batches.run(stack, "one async job", job)
            batches.run(stack, singles, lambda: clients("singles", singles, one_each, 16))
            batches.run(stack, many, lambda: clients("chunks", many, chunks(texts), 4))
        run.notes["lowest_cosine_vs_raw_float32"] = lowest
        run.checks.append(
            Bar("job vectors vs raw float32, lowest cosine", lowest, MIN_COSINE, "",
                lowest >= MIN_COSINE)
        )  # fmt: skip
        memory = gpu_memory(f"http://127.0.0.1:{metrics_port}/metrics")
        run.notes["gpu_memory_bytes"] = memory
        share = memory["reserved"] / memory["total"] if on_gpu and memory else None
        within = None if share is None else share <= args.fraction
        label = "the worker's reserved GPU memory, share of the card"
        run.checks.append(Bar(label, share, args.fraction, "", within))


ROWS = (
    Row("raw_float16", "raw_float32"),
    Row("raw_float16_big", "raw_float32"),
    Row("job", "raw_float32"),
    Row("job", "raw_float16_big"),
    Row("singles", "raw_float16_single"),
    Row("singles_p95"),
    Row("chunks", "raw_float16"),
    Row("chunks_p50"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit", type=positive, default=2000, help="passages used")
    parser.add_argument("--singles", type=positive, default=800, help="one-passage requests")
    parser.add_argument("--fraction", type=float, default=0.25, help="GPU_MEMORY_FRACTION")
    parser.add_argument("--batch-size", type=positive, default=256, help="the worker's BATCH_SIZE")
    parser.add_argument("--repeat", type=positive, default=2)
    parser.add_argument("--allow-cpu", action="store_true", help="a dry run without CUDA")
    args = parser.parse_args(argv)
    check_repeat(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device: this suite proves the GPU path (--allow-cpu: a dry run)")
        return 2
    texts = load_texts(args.corpus, args.limit)
    run = Run(args, texts, texts[: args.singles])
    started = time.time()
    service_figures(run, raw_figures(run))
    print("\n" + "\n".join([*table(run.figures, ROWS), "", *run.batches.lines()]))
    data = {
        "suite": "gpu",
        "started": started,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "figures": run.figures.as_dict(),
        "batches": run.batches.as_dict(),
        "notes": run.notes,
    }
    return finish("gpu", data, run.checks)


if __name__ == "__main__":
    run(main)
