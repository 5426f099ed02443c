"""The report's "Normative learning" section, per dataset: RQI, AHI, CACI and the composite of every method that
restores images, as a table (mean ± std over seeds) and a grouped bar chart.

Built from the run folders' ``metrics.json`` ``normative`` summaries (``benchmark/normative.py``): RQI on the
healthy test set, AHI / CACI / composite averaged over the lesion test sets. Methods without a reconstruction show
``n/a`` with the reason; the section is absent when no run of the dataset has a normative summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.markdown import markdown_table
from benchmark.report_common import FIGURES, NA, format_mean_std, image_link, new_figure, save_figure, slug
from benchmark.report_sweep import Run, Sweep

INDICES = (("RQI", "rqi"), ("AHI", "ahi_mean"), ("CACI", "caci_mean"), ("composite", "composite_mean"))
COLORS = {"RQI": "tab:blue", "AHI": "tab:orange", "CACI": "tab:green", "composite": "tab:gray"}

NORMATIVE_GUIDE = """\
**Normative learning** (methods that restore images; Bercea et al., Nature Communications 2025): **RQI** how well
healthy images are reconstructed (1 = perfectly), **AHI** how much of the feature-space gap between pathological
inputs and healthy images their restorations close (1 = restorations as close to healthy training images as
unseen healthy ones), **CACI** how much of the restoration's change falls inside the lesions rather than in the
healthy tissue around them (1 = only the lesions change), **composite** = mean of AHI and the harmonic mean of RQI
and CACI. Higher is better for all four; the combinations are documented readings (`docs/evaluation.md`).
"""


def normative_summary(run: Run) -> dict[str, Any] | None:
    result = (run.metrics or {}).get("normative") if run.status == "completed" else None
    return result if isinstance(result, dict) else None


def has_normative(sweep: Sweep) -> bool:
    return any(normative_summary(run) is not None for run in sweep.runs)


def _runs(sweep: Sweep, dataset: str) -> dict[str, list[Run]]:
    """Per method (score variants merged: one restoration per run), its completed runs with a summary."""
    found: dict[str, dict[int, Run]] = {}
    for run in sweep.completed(dataset):
        if normative_summary(run) is not None:
            found.setdefault(run.path.parent.name, {}).setdefault(run.seed, run)
    return {method: [runs[seed] for seed in sorted(runs)] for method, runs in sorted(found.items())}


def _stats(runs: list[Run], key: str) -> tuple[float, float]:
    values = [normative_summary(run).get(key) for run in runs]
    if not values or any(v is None for v in values):
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else float("nan")


def _reason(runs: list[Run]) -> str:
    notes = normative_summary(runs[0]).get("notes") or {}
    return "; ".join(sorted(set(notes.values()))) if notes else ""


def plot_indices(found: dict[str, list[Run]], title: str, path: Path) -> bool:
    """Grouped bars: one group per method, one bar per index (mean over seeds, std as error bar)."""
    methods = [m for m, runs in found.items() if any(np.isfinite(_stats(runs, key)[0]) for _, key in INDICES)]
    if not methods:
        return False
    fig, axes = new_figure(1, 1, (max(4.0, 0.9 * len(methods) + 1.0), 2.8), (0.6, 0.2, 0.9, 0.4))
    ax, width = axes[0][0], 0.8 / len(INDICES)
    for i, (label, key) in enumerate(INDICES):
        stats = [_stats(found[m], key) for m in methods]
        positions = np.arange(len(methods)) + (i - (len(INDICES) - 1) / 2) * width
        ax.bar(positions, [np.nan_to_num(mean) for mean, _ in stats], width,
               yerr=[0 if not np.isfinite(std) else std for _, std in stats], color=COLORS[label], label=label)
    ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("index (higher is better)", fontsize=8)
    ax.legend(fontsize=7, ncol=len(INDICES), loc="upper center", bbox_to_anchor=(0.5, 1.2))
    ax.set_title(title, fontsize=9, pad=22)
    save_figure(fig, path)
    return True


def normative_section(sweep: Sweep, dataset: str) -> list[str]:
    found = _runs(sweep, dataset)
    if not found:
        return []
    rows = []
    for method, runs in found.items():
        summary = normative_summary(runs[0])
        cells = [format_mean_std(*_stats(runs, key)) for _, key in INDICES]
        reading = summary.get("rqi_reading") or NA
        rows.append([method, str(len(runs)), *cells, reading, str(summary.get("feature_extractor", NA)),
                     _reason(runs) if all(cell == NA for cell in cells) else ""])
    table = markdown_table(["method", "seeds", *(label for label, _ in INDICES), "RQI reading", "AHI features",
                            "note"], rows, "lr" + "r" * len(INDICES) + "lll")
    lines = ["### Normative learning", "", "RQI on the healthy test set; AHI, CACI and composite averaged over the "
             "lesion test sets (per test set in the leaderboard's `normative/*` columns).", "", table, ""]
    path = sweep.root / FIGURES / f"normative_{slug(dataset)}.png"
    if plot_indices(found, f"{dataset}: normative-learning indices", path):
        lines += [image_link(f"normative indices {dataset}", path, sweep.root), ""]
    return lines
