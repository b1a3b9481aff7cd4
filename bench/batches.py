"""The batches the worker really formed: its Redis stats hash (workers/batch_stats.py), reset
before and read after every run of a scenario, summed per scenario."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from local_stack import LocalService

T = TypeVar("T")
HEADING = "batches the worker formed, per scenario (texts/pass: the size_le_ buckets)"


class BatchLog:
    """The worker's batch counters per scenario, summed over its runs."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Counter[str]] = {}
        self.runs: Counter[str] = Counter()

    def run(self, stack: LocalService, scenario: str, work: Callable[[], T]) -> T:
        """`work()` between a reset and a read of the worker's stats hash."""
        stack.reset_batches()
        result = work()
        seen = stack.read_batches()
        self.scenarios.setdefault(scenario, Counter()).update(seen)
        self.runs[scenario] += 1
        print(f"    worker: {summary_line(seen)}", flush=True)
        return result

    def lines(self) -> list[str]:
        """The heading, then per scenario its summary and histogram, indented."""
        out = [HEADING]
        for scenario, seen in self.scenarios.items():
            out.append(f"  {scenario} ({self.runs[scenario]} runs): {summary_line(seen)}")
            out += ["  " + line for line in histogram(seen)]
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            name: {"runs": self.runs[name], "counters": dict(seen), **derived(seen)}
            for name, seen in self.scenarios.items()
        }


def derived(seen: Counter[str]) -> dict[str, float | None]:
    def per(a: str, b: str) -> float | None:
        return seen[a] / seen[b] if seen[b] else None

    return {
        "texts_per_pass": per("pass_texts", "passes"),
        "requests_per_collection": per("requests", "collections"),
        "texts_per_collection": per("texts", "collections"),
        "padding_ratio": per("padded_tokens", "tokens"),
        "distinct_share": per("distinct_texts", "texts"),
    }


def summary_line(seen: Counter[str]) -> str:
    if not seen["passes"]:
        return f"no forward pass ({seen['collections']:.0f} collections)"
    d = derived(seen)
    return (
        f"{seen['passes']:.0f} passes, {d['texts_per_pass']:.1f} texts/pass; "
        f"{seen['collections']:.0f} collections, {d['requests_per_collection']:.2f} "
        f"requests and {d['texts_per_collection']:.1f} texts each; padding "
        f"{d['padding_ratio']:.2f}x (padded/real tokens); forward {seen['seconds']:.1f} s"
    )


def histogram(seen: Counter[str]) -> list[str]:
    sizes = sorted(int(k.removeprefix("size_le_")) for k in seen if k.startswith("size_le_"))
    if not sizes:
        return []
    top = max(seen[f"size_le_{s}"] for s in sizes)
    out = []
    for size in sizes:
        count = seen[f"size_le_{size}"]
        span = f"{size // 2 + 1}-{size}" if size > 2 else f"{size}"
        out.append(f"    texts/pass {span:>7}: {count:6.0f} {'#' * round(40 * count / top)}")
    return out
