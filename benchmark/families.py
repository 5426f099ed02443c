"""Averages over dataset variants: a family is the leaderboard datasets sharing the name before ``@``.

A sweep grid entry (see :mod:`benchmark.sweep`) such as ``digits: {held_out_class: [0, ..., 9]}`` gives ten
datasets ``digits@held_out_class=0`` ... ``digits@held_out_class=9``: one family ``digits``. For each method and
test set, :func:`family_averages` averages the per-dataset seed means over the family's members, and
:func:`family_table` shows the result as a markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from benchmark.leaderboard import NO_TEST_SET
from benchmark.markdown import markdown_table

ID_COLUMNS = ("family", "method", "test_set", "n_datasets", "datasets")
MEAN, STD = "mean_over_datasets", "std_over_datasets"


def family_of(name: str) -> str:
    """``digits@held_out_class=3`` -> ``digits``; a name without ``@`` is its own family."""
    return name.partition("@")[0]


def _member_values(group: pd.DataFrame, metric: str) -> np.ndarray:
    """The finite ``<metric>:mean`` values of a family's rows (a metric missing from the board has none)."""
    column = f"{metric}:mean"
    if column not in group:
        return np.array([], dtype=np.float64)
    values = pd.to_numeric(group[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def family_averages(board: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per family (of at least two datasets) x method x test set of a leaderboard.

    Columns: ``family, method, test_set, n_datasets, datasets`` and, per metric, ``<metric>:mean_over_datasets``
    (mean over the member datasets of their ``<metric>:mean``) and ``<metric>:std_over_datasets`` (sample std,
    ddof 1; NaN with fewer than two values). A member whose mean is NaN is left out of that metric's numbers;
    ``n_datasets`` counts the members with a finite mean of the first metric, ``datasets`` names (``;``-joined)
    the members that have a row for this method and test set. Rows of failed groups (test set ``-``) are ignored.
    Sorted by family, test set, the first metric's average (best first, NaN last) and method."""
    stats = [f"{metric}:{stat}" for metric in metrics for stat in (MEAN, STD)]
    rows = board[board["test_set"].astype(str) != NO_TEST_SET]
    out = []
    for family, members in rows.groupby(rows["dataset"].astype(str).map(family_of), sort=False):
        if members["dataset"].nunique() < 2:
            continue
        for (method, test_set), group in members.groupby(["method", "test_set"], sort=False):
            row = {"family": family, "method": method, "test_set": test_set, "n_datasets": len(group),
                   "datasets": ";".join(group["dataset"].astype(str))}
            for index, metric in enumerate(metrics):
                values = _member_values(group, metric)
                if index == 0:
                    row["n_datasets"] = len(values)
                row[f"{metric}:{MEAN}"] = float(values.mean()) if len(values) else math.nan
                row[f"{metric}:{STD}"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            out.append(row)
    frame = pd.DataFrame(out, columns=[*ID_COLUMNS, *stats])
    frame["n_datasets"] = frame["n_datasets"].astype("int64")
    keys = ["family", "test_set", *([f"{metrics[0]}:{MEAN}"] if metrics else []), "method"]
    ascending = [True, True, *([False] if metrics else []), True]
    frame = frame.sort_values(keys, ascending=ascending, na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def _cell(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


def family_table(frame: pd.DataFrame, metrics: Sequence[tuple[str, str]]) -> str | None:
    """Markdown table of :func:`family_averages` rows: family, method, test set, datasets (their count) and per
    ``(title, metric)`` the ``mean ± std`` over datasets (3 decimals); None when there is no row."""
    if frame.empty:
        return None
    header = ["family", "method", "test set", "datasets", *(title for title, _ in metrics)]
    rows = [[str(row["family"]), str(row["method"]), str(row["test_set"]), str(int(row["n_datasets"])),
             *(_cell(float(row.get(f"{metric}:{MEAN}", math.nan)), float(row.get(f"{metric}:{STD}", math.nan)))
               for _, metric in metrics)]
            for _, row in frame.iterrows()]
    return markdown_table(header, rows, align="lllr" + "r" * len(metrics))
