"""Figures collected over repeats, the side-by-side table, the bars and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean

import numpy as np

from machine import OthersCpu

BAR_THROUGHPUT_RATIO = 0.85
BAR_SINGLE_EXTRA_MS = 15.0
BAR_API_RSS_MIB = 150.0


@dataclass
class Figure:
    """One measured quantity: a sample per repeat, and the CPU others took meanwhile."""

    label: str
    unit: str
    samples: list[float] = field(default_factory=list)
    others_cpu_percent: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return fmean(self.samples)

    def cell(self) -> str:
        """'mean [min-max] unit'."""
        low, high = min(self.samples), max(self.samples)
        return f"{self.mean:7.1f} [{low:.1f}-{high:.1f}] {self.unit}"

    def others_cell(self) -> str:
        """Mean and highest share of the cores that other processes took."""
        shares = self.others_cpu_percent
        return f"{fmean(shares):3.0f}% ({max(shares):.0f}%)" if shares else ""


class Figures(dict[str, Figure]):
    """Figures by key; a figure appears with its first sample."""

    def add(
        self, key: str, label: str, unit: str, value: float, others: float | None = None
    ) -> None:
        figure = self.setdefault(key, Figure(label, unit))
        figure.samples.append(value)
        note = ""
        if others is not None:
            figure.others_cpu_percent.append(others)
            note = f"  (other processes: {others:.0f}% of the cores)"
        print(f"  {label}: {value:.1f} {unit}{note}", flush=True)

    def measure(self, key: str, label: str, unit: str, work: Callable[[], float]) -> None:
        """One sample of what `work` returns."""
        with OthersCpu() as others:
            value = work()
        self.add(key, label, unit, value, others.percent)

    def latencies(self, key: str, label: str, work: Callable[[], list[float]]) -> None:
        """p50 and p95 (keys `key`_p50, `key`_p95) of the seconds that `work` returns."""
        with OthersCpu() as others:
            seconds = work()
        p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
        self.add(f"{key}_p50", f"{label} p50", "ms", float(p50), others.percent)
        self.add(f"{key}_p95", f"{label} p95", "ms", float(p95), others.percent)

    def mean(self, key: str) -> float | None:
        return self[key].mean if key in self else None


@dataclass(frozen=True)
class Row:
    """A service figure next to the raw figure it is compared with."""

    service: str
    raw: str
    kind: str  # "ratio" (service / raw) or "diff" (service - raw, ms)


ROWS = (
    Row("sync_1", "raw_chunks", "ratio"),
    Row("async_1", "raw_chunks", "ratio"),
    Row("sync_4", "raw_chunks", "ratio"),
    Row("sync_4", "raw_whole", "ratio"),
    Row("sync_p50", "raw_p50", "diff"),
    Row("sync_p95", "raw_p95", "diff"),
)


def compare(figures: Figures, row: Row) -> float | None:
    service, raw = figures.mean(row.service), figures.mean(row.raw)
    if service is None or raw is None:
        return None
    return service / raw if row.kind == "ratio" else service - raw


def _compared(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if kind == "ratio" else f"{value:+.1f} ms"


HEADER = (
    "service",
    "mean [min-max]",
    "others' CPU",
    "raw",
    "mean [min-max]",
    "others' CPU",
    "ratio",
)


def _line(*cells: str) -> str:
    widths = (22, 28, 13, 26, 28, 13, 11)
    return " ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))


def table(figures: Figures) -> list[str]:
    """Service figures beside their raw references; then memory."""
    lines = [_line(*HEADER), "-" * 148]
    for row in ROWS:
        service, raw = figures[row.service], figures[row.raw]
        lines.append(
            _line(
                service.label,
                service.cell(),
                service.others_cell(),
                raw.label,
                raw.cell(),
                raw.others_cell(),
                _compared(compare(figures, row), row.kind),
            )
        )
    memory = [key for key in figures if key.startswith("rss_")]
    if memory:
        lines += ["", "memory (VmRSS at the end of each service repeat)"]
        lines += [f"  {figures[key].label.ljust(36)} {figures[key].cell()}" for key in memory]
    lines += [
        "",
        "others' CPU: share of all cores that processes outside the bench (and steal) took",
        "while the figure ran, mean (highest); with --url the service itself counts as others.",
    ]
    return lines


@dataclass(frozen=True)
class Bar:
    name: str
    value: float | None  # None: not measured
    limit: float
    unit: str
    passed: bool | None


def _at_least(name: str, value: float | None, limit: float, unit: str) -> Bar:
    return Bar(name, value, limit, unit, None if value is None else value >= limit)


def _at_most(name: str, value: float | None, limit: float, unit: str) -> Bar:
    return Bar(name, value, limit, unit, None if value is None else value <= limit)


def bars(figures: Figures) -> list[Bar]:
    """The acceptance bars, judged on the means."""
    out = [
        _at_least(
            f"{figures[key].label} >= {BAR_THROUGHPUT_RATIO}x raw chunks of 32",
            compare(figures, Row(key, "raw_chunks", "ratio")),
            BAR_THROUGHPUT_RATIO,
            "x",
        )
        for key in ("sync_1", "async_1")
    ]
    out.append(
        _at_most(
            f"single-text p50 <= raw p50 + {BAR_SINGLE_EXTRA_MS:g} ms",
            compare(figures, Row("sync_p50", "raw_p50", "diff")),
            BAR_SINGLE_EXTRA_MS,
            " ms",
        )
    )
    out.append(
        _at_most(
            f"API RSS (largest gunicorn worker) <= {BAR_API_RSS_MIB:g} MiB",
            figures.mean("rss_api"),
            BAR_API_RSS_MIB,
            " MiB",
        )
    )
    return out


def bar_lines(results: list[Bar]) -> list[str]:
    lines = ["bars"]
    for bar in results:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[bar.passed]
        shown = (
            "not measured"
            if bar.value is None
            else f"{bar.value:.2f}{bar.unit}, limit {bar.limit:g}{bar.unit}"
        )
        lines.append(f"  {verdict}  {bar.name}  ({shown})")
    return lines


def write_json(path: Path, config: dict[str, object], figures: Figures, results: list[Bar]) -> None:
    """Config, every sample, the comparisons and the bars."""
    data = {
        "config": config,
        "figures": {key: asdict(fig) | {"mean": fig.mean} for key, fig in figures.items()},
        "comparisons": [asdict(row) | {"value": compare(figures, row)} for row in ROWS],
        "bars": [asdict(bar) for bar in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
