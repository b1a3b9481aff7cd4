"""Local sentence-transformers models on ONNX Runtime (CPU only).

The transformer is exported once from the shipped weights (never a hub) to
MODEL_CACHE_DIR/onnx/<model>/<key>/model.onnx, where <key> hashes the revision, the export
format and the weight files' sizes; the int8 variant is quantized from it into the same
folder. Files are written under a temporary name and renamed, so concurrent exporters never
leave a torn file. Tokenization (tokenizer.json) and pooling (the model's Pooling config)
run here and reproduce the sentence-transformers pipeline, without its Normalize module.

Exporting needs torch; serving does not. `embeddings export-onnx` (a build step, or a
one-off command where torch is installed) writes the files; a worker without torch finds
them under the same key, and one with torch exports whatever is missing on first load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.registry import ModelSpec

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_FORMAT = 1
"""Part of the cache key: raise it when the exported graph changes shape or meaning."""
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
ENCODING_FIELDS = {  # graph input the export can declare -> tokenizers' Encoding attribute
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "type_ids",
}
LEGACY_POOLING_KEYS = {  # the old boolean keys, in sentence-transformers' concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}


def export_dir(spec: ModelSpec, cache_root: Path) -> Path:
    """Where this model's exports live; new weights, revision or export format: a new one.
    torch's version is left out, so a worker without torch finds what a build step made."""
    weights = spec.local_path()
    sizes = sorted(
        (str(path.relative_to(weights)), path.stat().st_size)
        for path in weights.rglob("*")
        if path.is_file()
    )
    key = json.dumps([spec.revision, EXPORT_FORMAT, OPSET, sizes])
    return cache_root / "onnx" / spec.name / hashlib.sha256(key.encode()).hexdigest()[:16]


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file beside `target`, then rename it over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp's 0600 would hide it from workers running as other users
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def export_fp32(model_dir: Path, target: Path) -> None:
    """Trace the HF transformer (inputs -> last_hidden_state) to ONNX with dynamic axes."""
    import warnings

    import torch
    from transformers import AutoModel, AutoTokenizer

    # Eager attention traces to plain MatMul/Softmax, which ORT runs ~1.5x faster than the
    # NaN-guarded graph that the SDPA path traces to.
    model = AutoModel.from_pretrained(
        model_dir, local_files_only=True, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    names = [name for name in ENCODING_FIELDS if name in tokenizer.model_input_names]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    # Two lengths, so the example pads and the traced graph keeps the attention-mask path.
    example = tokenizer(["a b", "a b c d e f"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    with warnings.catch_warnings():
        # Shape checks traced as constants in transformers' mask code, and indexing that
        # would be wrong with negative indices (there are none); the tests cover batches
        # with and without padding, of other sizes and lengths.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(
            LastHiddenState(),
            tuple(example[name] for name in names),
            str(target),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic quantization: int8 weights, one scale per output channel.

    Per-channel scales lift MiniLM's agreement with fp32 from a mean cosine of 0.957 (min
    0.895) to 0.992 (min 0.980) over 500 passages, at no measurable cost in speed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    previous = logging.root.manager.disable
    # It logs a line per node on the root logger, and advice to pre-process the model.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        logging.disable(previous)


class ExportMissing(RuntimeError):
    """No export on disk, and this process lacks the packages that would make one."""


def require(spec: ModelSpec, missing: Path, packages: tuple[str, ...]) -> None:
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise ExportMissing(
                f"{spec.name}: no ONNX export at {missing}, and this process cannot make one "
                f"({package} is not installed): run `embeddings export-onnx` with the same "
                "MODEL_CACHE_DIR where requirements/torch.txt is installed (the Dockerfile's "
                "worker-cpu target does it at build time)"
            )


def ensure_export(spec: ModelSpec, cache_root: Path, int8: bool) -> Path:
    """The cached .onnx for this model, exported (and quantized) first if missing."""
    folder = export_dir(spec, cache_root)
    fp32, quantized = folder / FP32_FILE, folder / INT8_FILE
    wanted = quantized if int8 else fp32
    if wanted.exists():
        return wanted
    if not fp32.exists():
        require(spec, fp32, ("torch", "transformers", "onnx"))
        log.info("exporting %s to ONNX at %s", spec.name, fp32)
        write_atomically(fp32, lambda tmp: export_fp32(spec.local_path(), tmp))
    if int8:
        require(spec, quantized, ("onnx",))
        log.info("quantizing %s to int8 at %s", spec.name, quantized)
        write_atomically(quantized, lambda tmp: quantize_int8(fp32, tmp))
    return wanted


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The modes of a Pooling config, old boolean keys or new `pooling_mode`, in order."""
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        modes: tuple[str, ...] = (mode,)
    elif isinstance(mode, list):
        modes = tuple(mode)
    else:
        modes = tuple(name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key))
    unsupported = set(modes) - set(LEGACY_POOLING_KEYS.values())
    if unsupported or not modes:
        raise ValueError(f"pooling modes {modes} are not supported by the onnx backend")
    return modes


def pool(hidden: np.ndarray, mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """sentence-transformers' Pooling over (batch, seq, dim) with a 0/1 mask, as float32."""
    weights = mask[:, :, None].astype(np.float32)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    vectors = {
        "cls": lambda: hidden[np.arange(len(hidden)), mask.argmax(axis=1)],
        "max": lambda: np.where(weights > 0, hidden, -np.inf).max(axis=1),
        "mean": lambda: (hidden * weights).sum(axis=1) / counts,
        "mean_sqrt_len_tokens": lambda: (hidden * weights).sum(axis=1) / np.sqrt(counts),
    }
    return np.concatenate([vectors[mode]() for mode in modes], axis=1).astype(np.float32)


def read_pipeline(model_dir: Path) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The Pooling modes and the Transformer config; ValueError for modules we cannot run."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = {module["type"].rsplit(".", 1)[-1]: module["path"] for module in modules}
    if set(kinds) - set(SUPPORTED_MODULES) or "Pooling" not in kinds:
        raise ValueError(f"modules {sorted(kinds)} are not supported by the onnx backend")
    pooling = json.loads((model_dir / kinds["Pooling"] / "config.json").read_text())
    config_file = model_dir / "sentence_bert_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    return pooling_modes(pooling), config


def load_tokenizer(spec: ModelSpec, max_tokens: int) -> Tokenizer:
    """The model's fast tokenizer, padding to the longest text, truncating at max_tokens."""
    from tokenizers import Tokenizer

    path = spec.tokenizer_file()
    if path is None:
        raise ValueError(f"{spec.name}: the onnx backend needs the model's tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    # tokenizer.json may pin a fixed length (128 for MiniLM): keep its side and pad token only.
    tokenizer.enable_padding(**{**(tokenizer.padding or {}), "length": None})
    truncation = {**(tokenizer.truncation or {}), "max_length": max_tokens}
    tokenizer.enable_truncation(**truncation)
    return tokenizer


def cpu_threads() -> int:
    """The CPU threads this process should use: OMP_NUM_THREADS where set (a pod's CPU limit,
    as deploy/k8s sets it: a container sees every core of its node), else the cores it may
    run on."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def open_session(path: Path, threads: int) -> InferenceSession:
    """A CPU InferenceSession whose passes each run on `threads` threads, with all graph
    optimizations. Its threads sleep between passes instead of spinning: they share the
    cores with the worker's own threads (and, on small machines, the API), which spinning
    would starve. Concurrent passes (workers/batcher.py's streams) are safe."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    device = "cpu"

    def __init__(
        self, spec: ModelSpec, cache_root: Path, int8: bool = False, threads: int | None = None
    ) -> None:
        model_dir = spec.local_path()
        self._modes, config = read_pipeline(model_dir)
        max_tokens = min(int(config.get("max_seq_length") or spec.max_tokens), spec.max_tokens)
        self._lowercase = bool(config.get("do_lower_case"))
        self._tokenizer = load_tokenizer(spec, max_tokens)
        self._session = open_session(
            ensure_export(spec, cache_root, int8), threads or cpu_threads()
        )
        self._inputs = [(i.name, ENCODING_FIELDS[i.name]) for i in self._session.get_inputs()]
        self.name = spec.name
        self.precision = "int8" if int8 else "float32"
        self.dimensions = int(self._session.get_outputs()[0].shape[-1]) * len(self._modes)

    @property
    def threads(self) -> int:
        """The CPU threads each pass runs on."""
        return int(self._session.get_session_options().intra_op_num_threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._lowercase:
            texts = [text.lower() for text in texts]
        encodings = self._tokenizer.encode_batch(texts)
        arrays = {
            field: np.array([getattr(e, field) for e in encodings], dtype=np.int64)
            for field in ENCODING_FIELDS.values()
        }
        feeds = {name: arrays[field] for name, field in self._inputs}
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        return pool(hidden, arrays["attention_mask"], self._modes)
