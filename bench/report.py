"""Figures collected over repeats, the side-by-side table, the bars and the JSON file that
every suite writes (bench/results/<suite>-<timestamp>.json, or $BENCH_RESULTS_FILE)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from machine import OthersCpu
from suite import RESULTS_DIR, ROOT

RESULTS_FILE_ENV = "BENCH_RESULTS_FILE"
"""Set by bench/run.py: the exact file a suite writes its JSON to."""


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

    def as_dict(self) -> dict[str, object]:
        """Every sample, and their mean, min and max."""
        samples = self.samples
        return asdict(self) | {"mean": self.mean, "min": min(samples), "max": max(samples)}


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

    def percentiles(
        self,
        key: str,
        label: str,
        seconds: Sequence[float],
        others: float | None,
        points: Sequence[int] = (50, 95),
    ) -> None:
        """Percentiles of `seconds`, in ms, as figures `key`_p50 ('`label` p50'), ..."""
        values = np.percentile(np.array(seconds) * 1000, points)
        for point, value in zip(points, values, strict=True):
            self.add(f"{key}_p{point}", f"{label} p{point}", "ms", float(value), others)

    def latencies(self, key: str, label: str, work: Callable[[], list[float]]) -> None:
        """p50 and p95 (keys `key`_p50, `key`_p95) of the seconds that `work` returns."""
        with OthersCpu() as others:
            seconds = work()
        self.percentiles(key, label, seconds, others.percent)

    def mean(self, key: str) -> float | None:
        return self[key].mean if key in self else None

    def as_dict(self) -> dict[str, object]:
        return {key: figure.as_dict() for key, figure in self.items() if figure.samples}


# --- comparisons and the table ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A figure of the table, with the reference figure it is compared with, if any."""

    service: str
    raw: str | None = None
    kind: str = "ratio"  # "ratio" (service / raw) or "diff" (service - raw)


def compare(figures: Figures, row: Row) -> float | None:
    """The row's ratio or difference of means; None when a figure is missing."""
    service, raw = figures.mean(row.service), figures.mean(row.raw) if row.raw else None
    if service is None or raw is None:
        return None
    return service / raw if row.kind == "ratio" else service - raw


def ratio(figures: Figures, key: str, raw: str | None) -> float | None:
    return compare(figures, Row(key, raw))


def _compared(value: float | None, kind: str) -> str:
    if value is None:
        return ""
    return f"{value:.2f}x" if kind == "ratio" else f"{value:+.1f} ms"


def _cells(figures: Figures, row: Row) -> tuple[str, ...]:
    fig, ref = figures[row.service], figures.get(row.raw) if row.raw else None
    refs = (ref.label, ref.cell(), ref.others_cell()) if ref else ("", "", "")
    return (
        fig.label,
        fig.cell(),
        fig.others_cell(),
        *refs,
        _compared(compare(figures, row), row.kind),
    )


HEADER = (
    "service",
    "mean [min-max]",
    "others' CPU",
    "raw",
    "mean [min-max]",
    "others' CPU",
    "ratio",
)


def table(figures: Figures, rows: Iterable[Row]) -> list[str]:
    """Each figure beside the one it is compared with, and their ratio (or difference);
    rows whose figure was not measured are left out."""
    lines = [HEADER, *(_cells(figures, row) for row in rows if row.service in figures)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = [
        " ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    return [text[0], "-" * (sum(widths) + len(widths) - 1), *text[1:]]


def others_note(extra: str = "") -> list[str]:
    """What the others' CPU column means (`extra` ends its sentence)."""
    return [
        "others' CPU: share of all cores that processes outside the bench (and steal) took",
        f"while the figure ran, mean (highest){extra}.",
    ]


def comparisons(figures: Figures, rows: Iterable[Row]) -> list[dict[str, object]]:
    """The rows that compare two figures, with their values, for the JSON file."""
    return [asdict(row) | {"value": compare(figures, row)} for row in rows if row.raw]


# --- bars -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    name: str
    value: float | None  # None: not measured
    limit: float
    unit: str
    passed: bool | None


def at_least(name: str, value: float | None, limit: float, unit: str) -> Bar:
    return Bar(name, value, limit, unit, None if value is None else value >= limit)


def at_most(name: str, value: float | None, limit: float, unit: str) -> Bar:
    return Bar(name, value, limit, unit, None if value is None else value <= limit)


def bar_line(bar: Bar) -> str:
    """'PASS  name  (value, limit)', FAIL or SKIP (not measured)."""
    verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[bar.passed]
    shown = (
        "not measured"
        if bar.value is None
        else f"{bar.value:.2f}{bar.unit}, limit {bar.limit:g}{bar.unit}"
    )
    return f"  {verdict}  {bar.name}  ({shown})"


def bar_lines(results: Iterable[Bar]) -> list[str]:
    return ["bars", *(bar_line(bar) for bar in results)]


def verdict(results: Iterable[Bar]) -> int:
    """Exit status: 1 when a bar fails."""
    return 1 if any(bar.passed is False for bar in results) else 0


# --- the JSON file ----------------------------------------------------------------------


def results_path(stem: str) -> Path:
    """$BENCH_RESULTS_FILE, else bench/results/<stem>-<timestamp>.json."""
    named = os.environ.get(RESULTS_FILE_ENV)
    return Path(named) if named else RESULTS_DIR / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}.json"


def write_json(stem: str, data: dict[str, Any]) -> Path:
    """`data` (its `bars` as dicts) to results_path(stem); returns the path."""
    path = results_path(stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data | {"bars": [asdict(bar) for bar in data.get("bars", [])]}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=float) + "\n")
    return path


def shown_path(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def finish(stem: str, data: dict[str, Any], results: list[Bar]) -> int:
    """Print the bars, write the JSON file (`data` and the bars), print its path; returns
    the exit status: 1 when a bar fails."""
    print("\n" + "\n".join(bar_lines(results)))
    path = write_json(stem, data | {"bars": results})
    print(f"\nwritten to {shown_path(path)}")
    return verdict(results)
