"""Torch vs ONNX Runtime (fp32 and int8) encoders for one local model, side by side.

    .venv/bin/python bench/backends.py [--limit 2000] [--single 100] [--repeat 2]
    (or `python3 dev.py bench backends`)

Encoders are built as a CPU worker builds them (ONNX exports cached under MODEL_CACHE_DIR).
Throughput: the first `limit` passages sorted by length, one embed call per pass of 32, as
the batcher cuts them. Latency: p50 of sequential one-text calls on the first `single`
passages. Each round measures every backend in turn (the order rotating), so background
load hits them alike; figures are mean [min-max] over rounds, with the half-spread, the
ratio to torch and the most CPU that other processes took during one measurement.
Agreement: cosines between backends' vectors over the first `agreement` passages; the bar
is ONNX fp32 against torch, lowest cosine > 0.999. Writes bench/results/backends-*.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from statistics import fmean

import numpy as np

import suite
from common.registry import ModelSpec, load_registry
from common.settings import load_settings
from machine import OthersCpu
from report import at_least, finish
from suite import DEFAULT_CORPUS, check_repeat, positive
from workers.providers.base import Encoder
from workload import load_texts

BACKENDS = ("torch", "onnx", "onnx-int8")
BAR_ONNX_MIN_COSINE = 0.999
PASS = 32

Sample = tuple[float, float]
"""A figure and the CPU % that other processes took while it was measured."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSONL: id, text")
    parser.add_argument("--model", help="registry name (default: DEFAULT_MODEL)")
    parser.add_argument("--limit", type=positive, default=2000, help="texts for throughput")
    parser.add_argument("--single", type=positive, default=100, help="one-text calls per round")
    parser.add_argument("--repeat", type=positive, default=2, help="rounds, at least 2")
    parser.add_argument("--agreement", type=positive, default=500, help="texts for the cosines")
    args = parser.parse_args()
    check_repeat(parser, args)
    return args


def build(spec: ModelSpec, backend: str, cache_root: Path) -> Encoder:
    if backend == "torch":
        from workers.providers.local import SentenceTransformerEncoder

        return SentenceTransformerEncoder(spec, "cpu", 1.0)
    from workers.providers.onnx import OnnxEncoder

    return OnnxEncoder(spec, cache_root, int8=backend == "onnx-int8")


def embed_in_passes(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Rows in the order of `texts`, embedded longest first in passes of 32."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    parts = [order[i : i + PASS] for i in range(0, len(order), PASS)]
    rows = np.concatenate([encoder.embed([texts[i] for i in part]) for part in parts])
    return rows[np.argsort(order)]


def throughput(encoder: Encoder, texts: list[str]) -> Sample:
    with OthersCpu() as others:
        started = time.perf_counter()
        embed_in_passes(encoder, texts)
        seconds = time.perf_counter() - started
    return len(texts) / seconds, others.percent


def single_p50(encoder: Encoder, texts: list[str]) -> Sample:
    latencies = []
    with OthersCpu() as others:
        for text in texts:
            started = time.perf_counter()
            encoder.embed([text])
            latencies.append(time.perf_counter() - started)
    return 1000 * float(np.median(latencies)), others.percent


def measure(
    encoders: dict[str, Encoder], texts: list[str], singles: list[str], repeat: int
) -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
    """Texts/s and single-text p50 per backend, one sample per round."""
    rates: dict[str, list[Sample]] = {name: [] for name in BACKENDS}
    p50s: dict[str, list[Sample]] = {name: [] for name in BACKENDS}
    for run in range(repeat):
        shift = run % len(BACKENDS)
        for name in BACKENDS[shift:] + BACKENDS[:shift]:
            rates[name].append(throughput(encoders[name], texts))
            p50s[name].append(single_p50(encoders[name], singles))
            print(
                f"round {run + 1}/{repeat} {name:<9} {rates[name][-1][0]:7.1f} texts/s "
                f"(others {rates[name][-1][1]:3.0f}% CPU)  p50 {p50s[name][-1][0]:6.2f} ms "
                f"(others {p50s[name][-1][1]:3.0f}%)",
                flush=True,
            )
    return rates, p50s


def cell(samples: list[Sample], torch: list[Sample]) -> str:
    """'mean [min-max] ±half-spread% ratio-to-torch others%' for one figure."""
    values = [value for value, _ in samples]
    mean, low, high = fmean(values), min(values), max(values)
    half_spread = 50 * (high - low) / mean
    ratio = mean / fmean(value for value, _ in torch)
    others = max(percent for _, percent in samples)
    return f"{mean:7.1f} [{low:.1f}-{high:.1f}] ±{half_spread:4.1f}% {ratio:5.2f}x {others:3.0f}%"


def table(rates: dict[str, list[Sample]], p50s: dict[str, list[Sample]]) -> list[str]:
    columns = "mean [min-max] ±spread /torch others"
    lines = [
        f"{'':<10} {'texts/s, passes of 32':<44} {'single-text p50, ms':<44}",
        f"{'backend':<10} {columns:<44} {columns:<44}",
    ]
    for name in BACKENDS:
        rate, p50 = cell(rates[name], rates["torch"]), cell(p50s[name], p50s["torch"])
        lines.append(f"{name:<10} {rate:<44} {p50:<44}")
    return lines


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def agreement(encoders: dict[str, Encoder], texts: list[str]) -> dict[str, dict[str, float]]:
    """Min, mean and 1st percentile of the cosines between each pair of interest."""
    vectors = {name: embed_in_passes(encoder, texts) for name, encoder in encoders.items()}
    found = {}
    for one, other in [("onnx", "torch"), ("onnx-int8", "torch"), ("onnx-int8", "onnx")]:
        values = cosines(vectors[one], vectors[other])
        found[f"{one} vs {other}"] = {
            "min": float(values.min()),
            "mean": float(values.mean()),
            "p1": float(np.percentile(values, 1)),
        }
    return found


def main() -> int:
    import torch

    args = parse_args()
    settings = load_settings()
    spec = load_registry(settings).get(args.model)
    texts = load_texts(args.corpus, max(args.limit, args.single, args.agreement))
    encoders: dict[str, Encoder] = {}
    for name in BACKENDS:
        started = time.perf_counter()
        encoders[name] = build(spec, name, settings.MODEL_CACHE_DIR)
        encoders[name].embed(texts[:PASS])  # warm-up
        print(f"built {name} in {time.perf_counter() - started:.1f} s", flush=True)
    print(
        f"{spec.name}: {args.limit} texts, {args.single} singles, {args.repeat} rounds; "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"onnxruntime intra-op threads {os.cpu_count()}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rates, p50s = measure(encoders, texts[: args.limit], texts[: args.single], args.repeat)
    print("\n" + "\n".join(table(rates, p50s)))
    print(f"\nagreement, cosine over the first {args.agreement} passages")
    cosine = agreement(encoders, texts[: args.agreement])
    for pair, found in cosine.items():
        print(f"  {pair:<18} " + "  ".join(f"{k} {v:.6f}" for k, v in found.items()))
    bars = [
        at_least(
            f"onnx vs torch, lowest cosine >= {BAR_ONNX_MIN_COSINE}",
            cosine["onnx vs torch"]["min"],
            BAR_ONNX_MIN_COSINE,
            "",
        )
    ]
    data = {
        "config": vars(args) | {"corpus": str(args.corpus), "model": spec.name},
        "texts_per_second": {name: [v for v, _ in rates[name]] for name in BACKENDS},
        "single_p50_ms": {name: [v for v, _ in p50s[name]] for name in BACKENDS},
        "agreement": cosine,
    }
    return finish("backends", data, bars)


if __name__ == "__main__":
    suite.run(main)
