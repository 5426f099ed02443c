"""The report's qualitative figures: every entry on the same slices of a test set, one figure per test set.

Built from each run's ``figures/qualitative_<test set>.npz`` (:mod:`benchmark.qualitative`; each entry's lowest
completed seed with one). First row: the inputs with the lesion outline; then one row per entry, best first by the
test set's rank metric: its anomaly map on each slice, scaled per entry from 0 to its own 99th percentile over the
shown slices (so colours compare across slices, not across entries), and right of it its reconstruction when the
method has one. More than :data:`ENTRIES_PER_PAGE` entries are split over several figures (pages).

Older run folders have only the PNG grid of their first test batch (``qualitative_<test set>.png``); their entries
are listed with links to those grids instead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmark.leaderboard import group_primary
from benchmark.markdown import markdown_table
from benchmark.naming import qualitative_arrays_name, qualitative_name
from benchmark.qualitative import (
    LESION_CRITERION,
    QualitativeSlices,
    draw_image,
    draw_map,
    load_qualitative,
    map_limits,
    row_label,
    same_slices,
    slice_title,
    title_y,
)
from benchmark.report_common import (
    FIGURES,
    HEADLINE,
    NA,
    entry_label,
    image_link,
    is_finite,
    save_figure,
    slug,
    sorted_block,
    unique,
)
from benchmark.report_sweep import Run, Sweep, anomalous_test_sets

ENTRIES_PER_PAGE = 20
PANEL = 1.05  # inches per slice panel
GAP = 0.05


@dataclass(frozen=True)
class Entry:
    """One row of a qualitative figure: the entry's name, label, run and its arrays (``maps`` holds its map)."""

    method: str
    label: str
    run: Run
    shown: QualitativeSlices

    @property
    def anomaly_map(self) -> np.ndarray:
        return self.shown.maps[self.run.variant]


def saved_slices(sweep: Sweep, dataset: str, test_set: str) -> dict[str, tuple[Run, QualitativeSlices]]:
    """Per entry, its lowest completed seed whose ``qualitative_<test set>.npz`` holds the entry's map."""
    found: dict[str, tuple[Run, QualitativeSlices]] = {}
    loaded: dict[Path, QualitativeSlices | None] = {}  # the variants of a run share its file
    for run in sweep.completed(dataset):
        if run.method in found:
            continue
        path = run.path / FIGURES / qualitative_arrays_name(test_set)
        if path not in loaded:
            loaded[path] = load_qualitative(path, test_set)
        shown = loaded[path]
        if shown is not None and run.variant in shown.maps:
            found[run.method] = (run, shown)
    return found


def entry_order(rows: pd.DataFrame, test_set: str, primary: str) -> list[str]:
    """Entries best first by the test set's rank metric; for a set without one (``healthy``), by the mean rank
    over the dataset's other test sets (then by name)."""
    block = rows[rows["test_set"] == test_set]
    metric = group_primary(block, primary)
    if f"{metric}:mean" in block and pd.to_numeric(block[f"{metric}:mean"], errors="coerce").notna().any():
        return [str(method) for method in sorted_block(block, primary)["method"]]
    ranks = pd.to_numeric(rows.get("rank", pd.Series(math.nan, index=rows.index)), errors="coerce")
    mean_rank = ranks.groupby(rows["method"]).mean()
    return sorted(unique(rows["method"]), key=lambda m: (not is_finite(mean_rank.get(m)), mean_rank.get(m, 0.0), m))


def _value_line(rows: pd.DataFrame, method: str, test_set: str, primary: str) -> str:
    """``pixel AUPRC 0.048`` of the entry on this test set (empty without a finite rank metric)."""
    block = rows[(rows["test_set"] == test_set) & (rows["method"] == method)]
    if block.empty:
        return ""
    metric = group_primary(rows[rows["test_set"] == test_set], primary)
    value = pd.to_numeric(block.iloc[0].get(f"{metric}:mean", math.nan), errors="coerce")
    title = {m: t for t, m in HEADLINE}.get(metric, metric)
    return f"\n{title} {value:.3f}" if is_finite(value) else ""


def pages(entries: Sequence[Entry], size: int = ENTRIES_PER_PAGE) -> list[list[Entry]]:
    """The entries split into the fewest pages of at most ``size``, as even as possible, in order."""
    n_pages = max(1, math.ceil(len(entries) / size))
    bounds = np.linspace(0, len(entries), n_pages + 1).round().astype(int)
    return [list(entries[a:b]) for a, b in itertools.pairwise(bounds)]


def plot_page(entries: Sequence[Entry], reference: QualitativeSlices, title: str, path: Path) -> None:
    """One figure: the input row, then a map row per entry (and its reconstructions to the right when any)."""
    k = len(reference.indices)
    with_rec = any(entry.shown.reconstruction is not None for entry in entries)
    columns = k + (k + 1 if with_rec else 0)  # maps | spacer | reconstructions
    ratios = [1.0] * k + ([0.25] + [1.0] * k if with_rec else [])
    left = 0.25 + 0.065 * max(len(line) for entry in entries for line in entry.label.splitlines())
    top, bottom, right = 1.0, 0.1, 0.1
    width = left + right + PANEL * sum(ratios) + GAP * (columns - 1)
    height = top + bottom + PANEL * (len(entries) + 1) + GAP * len(entries)
    fig, axes = plt.subplots(len(entries) + 1, columns, squeeze=False, figsize=(width, height),
                             gridspec_kw={"width_ratios": ratios})
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=GAP / PANEL, hspace=GAP / PANEL)
    for ax in axes.ravel():
        ax.set_axis_off()
    recs = range(k + 1, columns)
    for i in range(k):
        axes[0][i].set_title(slice_title(reference, i), fontsize=6.5)
        draw_image(axes[0][i], reference.images[i], reference.masks[i])
        if with_rec:
            draw_image(axes[0][k + 1 + i], reference.images[i], reference.masks[i])
    row_label(axes[0][0], "input\n(lesion outline)" if reference.criterion == LESION_CRITERION else "input")
    for row, entry in enumerate(entries, start=1):
        limits = map_limits(entry.anomaly_map, reference.rois)
        for i in range(k):
            draw_map(axes[row][i], entry.anomaly_map[i], limits, reference.rois[i], reference.masks[i])
        if entry.shown.reconstruction is not None:
            for i, column in enumerate(recs):
                draw_image(axes[row][column], np.clip(entry.shown.reconstruction[i], 0.0, 1.0))
        row_label(axes[row][0], entry.label, fontsize=7.5)
    _group_titles(fig, axes, k, with_rec)
    fig.suptitle(title, fontsize=9, y=title_y(fig), va="top")
    save_figure(fig, path)


def _group_titles(fig: plt.Figure, axes: np.ndarray, k: int, with_rec: bool) -> None:
    """Titles over the map columns and the reconstruction columns, above the slice titles."""
    groups = [("anomaly map (per entry: 0 to its 99th percentile)", axes[0][0], axes[0][k - 1])]
    if with_rec:
        groups.append(("reconstruction (methods that restore images)", axes[0][k + 1], axes[0][-1]))
    y = 1 - 0.55 / fig.get_figheight()
    for text, first, last in groups:
        x = (first.get_position().x0 + last.get_position().x1) / 2
        fig.text(x, y, text, ha="center", va="bottom", fontsize=8, style="italic")


def _entries(sweep: Sweep, dataset: str, test_set: str, primary: str,
             found: dict[str, tuple[Run, QualitativeSlices]]) -> tuple[list[Entry], list[str]]:
    """The entries in figure order, keeping those on the reference slices; and the names left out (other slices)."""
    rows = sweep.rows(dataset)
    order = [m for m in entry_order(rows, test_set, primary) if m in found]
    order += sorted(set(found) - set(order))
    labels = {str(row["method"]): entry_label(row) for _, row in rows[rows["test_set"] == test_set].iterrows()}
    entries, other = [], []
    for method in order:
        run, shown = found[method]
        if entries and not same_slices(entries[0].shown, shown):
            other.append(method)
            continue
        label = f"{labels.get(method, method)}\nseed {run.seed}{_value_line(rows, method, test_set, primary)}"
        entries.append(Entry(method, label, run, shown))
    return entries, other


def _readable(path: Path) -> bool:
    """Whether ``path`` is a PNG that matplotlib can read."""
    try:
        return path.is_file() and mpimg.imread(path).size > 0
    except (OSError, ValueError, SyntaxError):
        return False


def _legacy_table(sweep: Sweep, dataset: str, methods: Sequence[str], test_sets: Sequence[str]) -> list[str]:
    """Links to the PNG grids of run folders without saved slices (written before the npz existed): per entry and
    test set, its lowest completed seed with a readable one."""
    rows = []
    for method in methods:
        runs = [run for run in sweep.completed(dataset) if run.method == method]
        cells = []
        for test_set in test_sets:
            paths = (run.path / FIGURES / qualitative_name(test_set, run.variant) for run in runs)
            path = next((path for path in paths if _readable(path)), None)
            cells.append(image_link(f"{method} {test_set}", path, sweep.root) if path else NA)
        if any(cell != NA for cell in cells):
            rows.append([method, *cells])
    if not rows:
        return []
    return ["Run folders without saved slices (older runs): their own grid of the first test batch with a lesion "
            "(input | reconstruction | anomaly map | mask).", "", markdown_table(["method", *test_sets], rows), ""]


def qualitative_section(sweep: Sweep, dataset: str, primary: str) -> list[str]:
    """Per test set one figure (or several pages) of every entry's maps on the same slices."""
    lesion_sets = anomalous_test_sets(sweep, dataset)
    test_sets = [*lesion_sets, *(t for t in sweep.test_sets(dataset) if t not in lesion_sets)]
    lines, with_arrays = [], set()
    for test_set in test_sets:
        found = saved_slices(sweep, dataset, test_set)
        entries, other = _entries(sweep, dataset, test_set, primary, found)
        if not entries:
            continue
        with_arrays |= set(found)
        reference, split = entries[0].shown, pages(entries)
        what = "lesion pixels" if reference.criterion == LESION_CRITERION else "roi area (no lesion masks)"
        lines += [f"**{test_set}**: the {len(reference.indices)} slices with the most {what}.", ""]
        for number, page in enumerate(split, start=1):
            suffix = "" if len(split) == 1 else f"_{number}"
            path = sweep.root / FIGURES / f"qualitative_{slug(dataset)}_{slug(test_set)}{suffix}.png"
            part = "" if len(split) == 1 else f" (page {number}/{len(split)})"
            plot_page(page, reference, f"{dataset} / {test_set}{part}: every entry on the same slices", path)
            lines += [image_link(f"{dataset} {test_set} qualitative{part}", path, sweep.root), ""]
        if other:
            lines += [f"Not shown (saved other slices, e.g. from another dataset version): "
                      f"{', '.join(f'`{m}`' for m in other)}.", ""]
    legacy = [m for m in sweep.methods(dataset) if m not in with_arrays]
    lines += _legacy_table(sweep, dataset, legacy, lesion_sets)
    if not lines:
        return []
    intro = ("Per test set the same slices for every entry, chosen from the dataset: those with the most lesion "
             "pixels (test sets without lesions: the largest roi area). First row: the input with the lesion "
             "outline (cyan); then one row per entry, best first by the test set's rank metric (test sets without "
             "one: by the mean rank over the others), its anomaly map scaled from 0 to the entry's own 99th "
             "percentile over these slices (colours compare across slices, not across entries; black: outside "
             "the roi) and, right of it, its reconstruction for methods that restore images. Each entry's lowest "
             "completed seed.")
    return ["### Qualitative examples", "", intro, "", *lines]
