"""Local sentence-transformers models on torch (CPU or CUDA). Heavy imports live here only."""

from __future__ import annotations

import logging

import numpy as np

from common.registry import ModelSpec

log = logging.getLogger(__name__)


def pick_device(want_gpu: bool, gpu_enabled: bool) -> str:
    """'cuda' when asked for and present; otherwise 'cpu', saying why once. torch is
    imported only to look for CUDA: a CPU worker serving ONNX never loads it."""
    if not want_gpu:
        return "cpu"
    if not gpu_enabled:
        log.warning("this worker serves the gpu queue but GPU_ENABLED=false: serving on CPU")
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        log.warning("this worker serves the gpu queue but CUDA is not available: serving on CPU")
        return "cpu"
    return "cuda"


class SentenceTransformerEncoder:
    def __init__(self, spec: ModelSpec, device: str, gpu_memory_fraction: float) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Normalize

        if device == "cuda":
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction)
        model = SentenceTransformer(str(spec.local_path()), device=device, local_files_only=True)
        # Normalization is a per-request option, applied after the pass: drop the model's own.
        while len(model) and isinstance(model[len(model) - 1], Normalize):
            del model[len(model) - 1]
        model.max_seq_length = min(model.max_seq_length or spec.max_tokens, spec.max_tokens)
        if device == "cuda":
            model.half()
        model.eval()
        self._model = model
        self.name = spec.name
        self.device = device
        self.precision = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.dimensions = int(model.get_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
