"""The ONNX Runtime encoder against the torch one, with the real shipped model.

Encoders are built directly (and through WorkerRuntime._build, whose Redis client never
connects); one test starts a real CPU worker to show that serving ONNX never loads torch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from common.registry import ModelSpec, load_registry
from common.settings import load_settings
from tests.conftest import running_worker
from workers.providers import onnx
from workers.providers.base import Encoder
from workers.providers.onnx import OnnxEncoder
from workers.runtime import WorkerRuntime

LONG = "The quick brown fox jumps over the lazy dog near the riverbank. " * 40  # > 256 tokens
TEXTS = [
    "",
    "a",
    "Hi",
    "hello world",
    "Hello, World!",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "def add(a, b):\n    return a + b",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "3.14159 2.71828 1.41421 6.02214076e23",
    "https://example.com/path?query=1&other=two#fragment",
    "naïve café résumé coöperate façade",
    "Ünïcödé ÀÉÎÕÜ ßẞ ﬁ ligature Ｆｕｌｌｗｉｄｔｈ",  # noqa: RUF001
    "東京は日本の首都です。",
    "中文文本测试，包含标点符号。",  # noqa: RUF001
    "Привет, как дела? Всё хорошо.",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "Γειά σου Κόσμε",  # noqa: RUF001
    "I love pizza 🍕🍕🍕 and tacos 🌮!",
    "🚀🔥💯",
    "👨‍👩‍👧‍👦 family emoji with zero-width joiners",
    "zero\u200bwidth\u00a0no-break\tspace",
    "   leading and trailing spaces   ",
    "line one\nline two\r\nline three",
    "ALL CAPS SHOUTING TEXT",
    "MiXeD cAsE tExT",
    "repeated repeated repeated repeated repeated",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "The mitochondria is the powerhouse of the cell.",
    "Machine learning models map text to dense vectors.",
    "Embeddings capture semantic similarity between sentences.",
    "The stock market fell sharply after the announcement.",
    "She sells sea shells by the sea shore.",
    "Rain is expected tomorrow afternoon in most regions.",
    "To be, or not to be, that is the question.",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "e-mail: someone@example.org, phone: +1 (555) 010-9999",
    "<html><body><p>Some <b>markup</b></p></body></html>",
    '{"key": "value", "list": [1, 2, 3]}',
    "!!!???...,,,;;;:::",
    "Abstract Base Classes (ABCs) according to PEP 3119.",
    "Use this metaclass to create an ABC. " * 12,
    "word " * 300,
    "混合 mixed 言語 languages ✓ ✗ → ← ∑ ∞",
    LONG,
    LONG + " but this tail is cut off",
    "Ελληνικά " * 100,
    "🙂" * 400,
]


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_registry(load_settings()).get("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def torch_vectors(spec: ModelSpec) -> np.ndarray:
    from workers.providers.local import SentenceTransformerEncoder

    return in_passes(SentenceTransformerEncoder(spec, "cpu", 1.0), 8)


@pytest.fixture(scope="module")
def fp32(spec: ModelSpec, cache_root: Path) -> OnnxEncoder:
    return OnnxEncoder(spec, cache_root)


@pytest.fixture(scope="module")
def int8(spec: ModelSpec, cache_root: Path, fp32: OnnxEncoder) -> OnnxEncoder:
    return OnnxEncoder(spec, cache_root, int8=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def in_passes(encoder: Encoder, size: int) -> np.ndarray:
    """Rows for TEXTS embedded `size` at a time, so each pass pads differently."""
    return np.concatenate([encoder.embed(TEXTS[i : i + size]) for i in range(0, len(TEXTS), size)])


def test_long_texts_are_cut_at_max_tokens(spec: ModelSpec, fp32: OnnxEncoder) -> None:
    from tokenizers import Tokenizer

    whole = Tokenizer.from_file(str(spec.tokenizer_file()))
    whole.no_truncation()
    assert len(whole.encode(LONG).ids) > 256
    assert len(fp32._tokenizer.encode(LONG).ids) == 256


def test_fp32_matches_torch(fp32: OnnxEncoder, torch_vectors: np.ndarray) -> None:
    assert cosines(in_passes(fp32, 8), torch_vectors).min() > 0.999


def test_encoders_report_the_precision_they_run(
    spec: ModelSpec, fp32: OnnxEncoder, int8: OnnxEncoder
) -> None:
    from workers.providers.local import SentenceTransformerEncoder

    assert (fp32.precision, int8.precision) == ("float32", "int8")
    assert SentenceTransformerEncoder(spec, "cpu", 1.0).precision == "float32"  # fp16: CUDA


@pytest.mark.parametrize("text", ["a", "🚀🔥💯", LONG], ids=["short", "emoji", "long"])
def test_fp32_matches_torch_without_padding(
    fp32: OnnxEncoder, torch_vectors: np.ndarray, text: str
) -> None:
    index = TEXTS.index(text)
    assert cosines(fp32.embed([text]), torch_vectors[index : index + 1])[0] > 0.999


def test_int8_stays_close_to_torch(int8: OnnxEncoder, torch_vectors: np.ndarray) -> None:
    # Passages (bench/backends.py, first 500): min 0.980, mean 0.992. Here min 0.967, for
    # "" ([CLS] [SEP] alone); emoji-only and two-letter texts come next (0.977), mean 0.989.
    found = cosines(in_passes(int8, 8), torch_vectors)
    assert found.min() > 0.95
    assert found.mean() > 0.98


def test_the_encoder_keeps_the_protocol(fp32: OnnxEncoder, int8: OnnxEncoder) -> None:
    for encoder in (fp32, int8):
        checked: Encoder = encoder
        rows = checked.embed(TEXTS[:5])
        assert (checked.name, checked.dimensions, checked.device) == (
            "all-MiniLM-L6-v2",
            384,
            "cpu",
        )
        assert rows.dtype == np.float32
        assert rows.shape == (5, 384)
        assert not np.allclose(np.linalg.norm(rows[1:], axis=1), 1.0)  # not normalized


def test_a_second_encoder_reuses_the_cached_files(
    spec: ModelSpec, cache_root: Path, int8: OnnxEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = onnx.export_dir(spec, cache_root)
    files = sorted(folder.iterdir())
    assert [path.name for path in files] == [onnx.INT8_FILE, onnx.FP32_FILE]  # no temp left
    stamps = [path.stat().st_mtime_ns for path in files]

    def fail(*_: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx, "export_fp32", fail)
    monkeypatch.setattr(onnx, "quantize_int8", fail)
    OnnxEncoder(spec, cache_root, int8=True)
    assert [path.stat().st_mtime_ns for path in sorted(folder.iterdir())] == stamps


def test_the_cache_key_follows_the_revision(spec: ModelSpec, cache_root: Path) -> None:
    other = spec.model_copy(update={"revision": "another"})
    assert onnx.export_dir(other, cache_root) != onnx.export_dir(spec, cache_root)
    assert onnx.export_dir(spec, cache_root).parent == cache_root / "onnx" / spec.name


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        onnx.write_atomically(tmp_path / "model.onnx", broken)
    assert list(tmp_path.iterdir()) == []


def test_pooling_modes_follow_sentence_transformers() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    assert onnx.pooling_modes({"pooling_mode_mean_tokens": True}) == ("mean",)
    assert onnx.pooling_modes({"pooling_mode": ["cls", "max"]}) == ("cls", "max")
    pooled = onnx.pool(hidden, mask, ("cls", "max", "mean", "mean_sqrt_len_tokens"))
    expected = [1.0, 2.0, 3.0, 2.0, 2.0, -1.0, 4 / np.sqrt(2), -2 / np.sqrt(2)]
    np.testing.assert_allclose(pooled[0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="lasttoken"):
        onnx.pooling_modes({"pooling_mode": "lasttoken"})


def test_models_with_other_modules_are_refused(tmp_path: Path) -> None:
    modules = [
        {"type": "sentence_transformers.models.Transformer", "path": ""},
        {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
        {"type": "sentence_transformers.models.Dense", "path": "2_Dense"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        onnx.read_pipeline(tmp_path)


@pytest.fixture
def runtime(cache_root: Path) -> Iterator[WorkerRuntime]:
    settings = load_settings(MODEL_CACHE_DIR=cache_root, GPU_ENABLED=False)
    runtime = WorkerRuntime(settings, load_registry(settings), ["cpu"], "test-onnx")
    yield runtime
    runtime.redis.close()


def test_the_runtime_builds_the_backend_the_spec_names(
    runtime: WorkerRuntime, spec: ModelSpec, int8: OnnxEncoder
) -> None:
    encoder = runtime.batcher(spec.model_copy(update={"backend": "onnx-int8"})).encoder
    assert isinstance(encoder, OnnxEncoder)
    assert encoder.embed(["hello"]).shape == (1, 384)


@pytest.mark.parametrize(("cpu_streams", "streams", "threads"), [(0, 4, 1), (2, 2, 2), (1, 1, 4)])
def test_a_cpu_worker_shares_its_threads_out_between_streams(
    cache_root: Path, spec: ModelSpec, monkeypatch: pytest.MonkeyPatch,
    cpu_streams: int, streams: int, threads: int,
) -> None:  # fmt: skip
    """OMP_NUM_THREADS (the pod's CPU limit) is the worker's threads: CPU_STREAMS passes at
    once (0: one per thread), each on its share."""
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    settings = load_settings(MODEL_CACHE_DIR=cache_root, GPU_ENABLED=False, CPU_STREAMS=cpu_streams)
    runtime = WorkerRuntime(settings, load_registry(settings), ["cpu"], "test-onnx-streams")
    try:
        batcher = runtime.batcher(spec.model_copy(update={"backend": "onnx"}))
    finally:
        runtime.redis.close()
    assert batcher.streams == streams
    assert isinstance(batcher.encoder, OnnxEncoder)
    assert batcher.encoder.threads == threads


def test_a_cuda_worker_keeps_torch(
    runtime: WorkerRuntime,
    spec: ModelSpec,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FakeTorchEncoder:
        def __init__(self, spec: ModelSpec, device: str, fraction: float) -> None:
            self.name, self.device, self.dimensions = spec.name, device, 384
            self.precision = "float16"

    monkeypatch.setattr("workers.providers.local.SentenceTransformerEncoder", FakeTorchEncoder)
    runtime.device = "cuda"
    with caplog.at_level(logging.INFO, logger="workers.runtime"):
        encoder = runtime.batcher(spec.model_copy(update={"backend": "onnx"})).encoder
    assert isinstance(encoder, FakeTorchEncoder)
    assert sum("CPU-only" in record.message for record in caplog.records) == 1


def test_without_onnxruntime_a_cpu_worker_falls_back_to_torch(
    runtime: WorkerRuntime,
    spec: ModelSpec,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A GPU image (no onnxruntime) on a node without CUDA serves the model on CPU."""
    from workers.providers.local import SentenceTransformerEncoder

    hide(monkeypatch, "onnxruntime")
    with caplog.at_level(logging.WARNING, logger="workers.runtime"):
        encoder = runtime.batcher(spec.model_copy(update={"backend": "onnx"})).encoder
    assert isinstance(encoder, SentenceTransformerEncoder)
    assert encoder.embed(["hello"]).shape == (1, 384)
    assert any("onnxruntime is not installed" in r.message for r in caplog.records)


def hide(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """This process as a torch-less CPU image sees it: those packages are not installed."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in packages else real_find_spec(name, *a),
    )


def test_without_torch_a_worker_serves_the_export_it_finds(
    spec: ModelSpec, cache_root: Path, fp32: OnnxEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide(monkeypatch, "torch", "transformers", "onnx")
    served = OnnxEncoder(spec, cache_root)
    np.testing.assert_array_equal(served.embed(TEXTS[:4]), fp32.embed(TEXTS[:4]))


def test_without_torch_a_missing_export_names_the_command_that_makes_it(
    spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide(monkeypatch, "torch")
    with pytest.raises(onnx.ExportMissing, match=r"torch is not installed.*embeddings export-onnx"):
        OnnxEncoder(spec, tmp_path)
    assert not list(tmp_path.rglob("*.onnx"))


def test_export_onnx_writes_what_a_worker_then_finds(spec: ModelSpec, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "export-onnx", "--model", spec.name],
        env=dict(os.environ, MODEL_CACHE_DIR=str(tmp_path), HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = onnx.export_dir(spec, tmp_path) / onnx.FP32_FILE
    assert done.stdout.strip() == f"{spec.name}: {expected}"
    assert expected.stat().st_size > 1_000_000


def test_a_cpu_worker_serving_onnx_never_loads_torch(
    redis_url: str, cache_root: Path, fp32: OnnxEncoder, tmp_path: Path
) -> None:
    """The real worker process, on the cpu queue with the shipped registry (backend onnx):
    no torch library is mapped into it once its model is loaded."""
    options = {"queues": "cpu", "MODEL_CACHE_DIR": str(cache_root)}
    with running_worker(redis_url, tmp_path / "worker.log", "notorch", **options) as process:
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "onnxruntime" in maps
        assert "libtorch" not in maps
