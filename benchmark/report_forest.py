"""The report's forest plots: every entry of a dataset x test set with lesions, one row each, best on top.

One figure per test set; one panel per headline metric side by side (the test set's rank metric first, then pixel
AUPRC, pixel AUROC and the calibrated Dice at 5 % healthy FPR, those with a finite value), sharing the rows. A point
is the mean over seeds, its bar the leaderboard's 95 % subject-bootstrap interval (``<metric>:ci_low`` /
``:ci_high``), else mean ± std over seeds (the axis label says which). ``random``'s interval is a grey band across
the panel and its mean a dashed line; entries whose ``beats_random`` is ``false`` are hollow and grey, marked
:data:`~benchmark.report_common.NOT_BEATING` in the row label; the baselines are squares with italic labels. The
height grows with the number of entries, so labels never overlap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.leaderboard import group_primary
from benchmark.report_common import (
    BASELINES,
    FIGURES,
    HEADLINE,
    NOT_BEATING,
    REFERENCE,
    beats_random,
    entry_label,
    image_link,
    interval_of,
    is_finite,
    new_figure,
    save_figure,
    slug,
    sorted_block,
)
from benchmark.report_sweep import Sweep, anomalous_test_sets

CALIBRATED_DICE = "calibrated/healthy_fpr@5%/dice"
ROW_HEIGHT = 0.24  # inches per entry
PANEL_WIDTH = 2.5
COLORS = {"method": "tab:blue", "baseline": "tab:orange", "reference": "0.3", "not beating": "0.6"}
KIND_NOTES = {"ci": "95 % subject-bootstrap CI", "std": "± std over seeds"}


@dataclass(frozen=True)
class Interval:
    """A mean and its bar; ``kind`` ``ci`` (bootstrap interval), ``std`` (mean ± seed std) or ``none``."""

    mean: float
    low: float
    high: float
    kind: str


@dataclass(frozen=True)
class ForestRow:
    """One entry of a forest plot: its name, label, kind (``method``, ``baseline``, ``reference``), whether it
    beats ``random`` (``true`` / ``false`` / ``n.a.``) and its interval per metric."""

    method: str
    label: str
    kind: str
    beats: str
    values: dict[str, Interval]

    @property
    def hollow(self) -> bool:
        """Drawn hollow and grey: the paired test says it does not beat ``random``."""
        return self.beats == "false"

    @property
    def color(self) -> str:
        return COLORS["not beating"] if self.hollow else COLORS[self.kind]

    @property
    def marker(self) -> str:
        return "o" if self.kind == "method" else "s"


def calibrated_dice(columns: Sequence[str], preferred: str = CALIBRATED_DICE) -> str | None:
    """The leaderboard's calibrated Dice: ``preferred`` when it has a ``:mean`` column, else the first
    ``calibrated/<threshold>/dice`` column (``None`` without any)."""
    names = [c[:-len(":mean")] for c in columns if re.fullmatch(r"calibrated/[^/]+/dice:mean", str(c))]
    return preferred if preferred in names else (names[0] if names else None)


def resolve(columns: Sequence[str], metric: str) -> str | None:
    """``metric`` itself, or for a calibrated Dice the board's own (:func:`calibrated_dice`)."""
    return calibrated_dice(columns, metric) if re.fullmatch(r"calibrated/[^/]+/dice", metric) else metric


def forest_metrics(block: pd.DataFrame, primary: str, metrics: Sequence[str]) -> list[str]:
    """The panels of a test set: its rank metric, then ``metrics`` (:func:`resolve`), each once and only with a
    finite mean."""
    wanted = [group_primary(block, primary), *(resolve(list(block.columns), metric) for metric in metrics)]
    return [m for m in dict.fromkeys(w for w in wanted if w)
            if f"{m}:mean" in block and pd.to_numeric(block[f"{m}:mean"], errors="coerce").notna().any()]


def interval(row: pd.Series, metric: str) -> Interval:
    """The row's mean of ``metric`` with the bootstrap interval, else ± std over seeds, else a point."""
    mean = float(pd.to_numeric(row.get(f"{metric}:mean", math.nan), errors="coerce"))
    bounds = interval_of(row, metric)
    if bounds is not None and is_finite(mean):
        return Interval(mean, bounds[0], bounds[1], "ci")
    std = float(pd.to_numeric(row.get(f"{metric}:std", math.nan), errors="coerce"))
    if is_finite(mean) and is_finite(std):
        return Interval(mean, mean - std, mean + std, "std")
    return Interval(mean, mean, mean, "none")


def _kind(method: str) -> str:
    return "reference" if method == REFERENCE else "baseline" if method in BASELINES else "method"


def forest_rows(block: pd.DataFrame, primary: str, metrics: Sequence[str]) -> list[ForestRow]:
    """The rows of one test set's forest plot, best first by its rank metric (NaN last, ties by name)."""
    return [ForestRow(str(row["method"]), entry_label(row), _kind(str(row["method"])), beats_random(row),
                      {metric: interval(row, metric) for metric in metrics})
            for _, row in sorted_block(block, primary).iterrows()]


def axis_label(rows: Sequence[ForestRow], metric: str) -> str:
    """The metric's title and what its bars are: bootstrap intervals, seed std, or both (std where no CI)."""
    title = {m: t for t, m in HEADLINE}.get(metric, metric)
    kinds = {row.values[metric].kind for row in rows if is_finite(row.values[metric].mean)}
    if kinds >= {"ci", "std"}:
        note = f"bars: {KIND_NOTES['ci']} ({KIND_NOTES['std']} where none)"
    elif kinds & set(KIND_NOTES):
        note = f"bars: {KIND_NOTES[next(iter(kinds & set(KIND_NOTES)))]}"
    else:
        note = "mean over seeds, no interval"
    return f"{title}\n{note}"


def _limits(rows: Sequence[ForestRow], metric: str) -> tuple[float, float]:
    values = [v for row in rows for v in (row.values[metric].low, row.values[metric].high) if is_finite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.06 * (high - low) if high > low else 0.05
    low, high = low - pad, high + pad
    if min(values, default=0.0) >= 0.0 and max(values, default=1.0) <= 1.0:  # a score in [0, 1]
        low, high = max(low, 0.0), min(high, 1.0)
    return (low, high) if high > low else (low - 0.05, high + 0.05)


def _panel(ax: Any, rows: Sequence[ForestRow], metric: str) -> None:
    """One metric's column: zebra rows, random's band and mean, one point and bar per entry."""
    for y in range(1, len(rows), 2):
        ax.axhspan(y - 0.5, y + 0.5, color="0.95", zorder=0, linewidth=0)
    reference = next((row.values[metric] for row in rows if row.kind == "reference"), None)
    if reference is not None and is_finite(reference.mean):
        if reference.kind != "none":
            ax.axvspan(reference.low, reference.high, color="0.55", alpha=0.18, zorder=1, linewidth=0)
        ax.axvline(reference.mean, color="0.35", linestyle="--", linewidth=0.9, zorder=1)
    low, high = _limits(rows, metric)
    for y, row in enumerate(rows):
        value = row.values[metric]
        if not is_finite(value.mean):
            ax.text(low + 0.02 * (high - low), y, "n/a", va="center", ha="left", fontsize=7, color="0.5")
            continue
        if value.kind != "none":
            ax.plot([value.low, value.high], [y, y], color=row.color, linewidth=1.4, zorder=2,
                    solid_capstyle="butt")
        ax.plot(value.mean, y, marker=row.marker, markersize=5.5, color=row.color, zorder=3, linestyle="none",
                markerfacecolor="white" if row.hollow else row.color, markeredgewidth=1.2)
    ax.set_xlim(low, high)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # best on top
    ax.grid(axis="x", color="0.85", linewidth=0.6, zorder=0)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(axis_label(rows, metric), fontsize=8)


def plot_forest(rows: Sequence[ForestRow], metrics: Sequence[str], title: str, path: Path) -> bool:
    """One figure: a panel per metric, a row per entry (labels on the left); ``False`` (no file) when empty."""
    if not rows or not metrics:
        return False
    left = 0.3 + 0.068 * max(len(row.label) for row in rows)
    fig, axes = new_figure(1, len(metrics), (PANEL_WIDTH, ROW_HEIGHT * len(rows) + 0.1), (left, 0.2, 0.75, 0.45),
                        (0.25, 0.0))
    for i, metric in enumerate(metrics):
        ax = axes[0][i]
        _panel(ax, rows, metric)
        ax.set_yticks(range(len(rows)), [row.label for row in rows] if i == 0 else [])
        ax.tick_params(axis="y", length=0, labelsize=8)
    for label, row in zip(axes[0][0].get_yticklabels(), rows, strict=True):
        label.set_color("0.45" if row.hollow else "black")
        label.set_fontstyle("normal" if row.kind == "method" else "italic")
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / fig.get_figheight(), va="top")
    save_figure(fig, path, tight=True)
    return True


def forest_section(sweep: Sweep, dataset: str, primary: str, metrics: Sequence[str]) -> list[str]:
    """The forest plots of a dataset's test sets with lesions, and which metrics had nothing to show."""
    rows = sweep.rows(dataset)
    marks = (f"; hollow grey points and a trailing {NOT_BEATING}: the entry does not beat random (paired subject "
             "bootstrap, p ≥ 0.05)") if "beats_random" in rows.columns else ""
    lines = ["### Metrics per test set", "",
             "Forest plots, one per test set: a row per entry, best first by the test set's rank metric; point = "
             "mean over seeds, bar = 95 % subject-bootstrap interval where the leaderboard has one, else ± std "
             f"over seeds (each axis says which). Grey band and dashed line: `{REFERENCE}`'s interval and mean; "
             f"squares and italic names: the baselines{marks}.", ""]
    drawn, shown = False, set()
    for test_set in anomalous_test_sets(sweep, dataset):
        block = rows[rows["test_set"] == test_set]
        panels = forest_metrics(block, primary, metrics)
        shown |= set(panels)
        path = sweep.root / FIGURES / f"forest_{slug(dataset)}_{slug(test_set)}.png"
        title = f"{dataset} / {test_set}: {len(block)} entries, best first by {group_primary(block, primary)}"
        if plot_forest(forest_rows(block, primary, panels), panels, title, path):
            lines += [image_link(f"{dataset} {test_set} forest plot", path, sweep.root), ""]
            drawn = True
    missing = [f"`{m}`" for m in metrics if resolve(list(rows.columns), m) not in shown]
    if missing:
        lines += [f"No finite values (or no leaderboard column) for {', '.join(missing)}.", ""]
    return lines if drawn or missing else []
