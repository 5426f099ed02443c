"""Building blocks shared by the sweep report (``report.py``) and its sections (``report_forest.py``,
``report_qualitative.py``, ``report_normative.py``, ``report_generative.py``).

The report's names for things (headline metrics, figure folder, baselines, marks), figure creation and saving with a
fixed geometry, file-name slugs and markdown image links, number formatting and a leaderboard block sorted best
first. Nothing here reads run folders (``report_sweep.py``) or imports torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmark.leaderboard import group_primary

HEADLINE = (
    ("pixel AUROC", "pixel/auroc"),
    ("pixel AUPRC", "pixel/auprc"),
    ("best Dice (oracle)", "pixel/best_dice[oracle_test]"),
    ("Dice @ 5% healthy FPR", "calibrated/healthy_fpr@5%/dice"),
    ("sample AUROC", "sample/auroc"),
    ("sample AUROC vs healthy set", "sample/vs_healthy/auroc"),
)
FIGURES = "figures"
NA = "n/a"
REFERENCE = "random"  # the entry every other one is tested against (leaderboard ``beats_random``)
BASELINES = (REFERENCE, "intensity")  # drawn apart from the methods in every figure
NOT_BEATING = "†"  # mark of an entry whose ``beats_random`` is ``false``


# ---- values and names -----------------------------------------------------------------------------------------------
def unique(values: Iterable[str]) -> list[str]:
    """The values as strings, each once, in first-seen order."""
    return list(dict.fromkeys(str(value) for value in values))


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite real number (``bool`` is not one)."""
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``"0.912 ± 0.010"``; only the mean when the std is NaN (one seed); ``n/a`` without a mean."""
    if not is_finite(mean):
        return NA
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if is_finite(std) else f"{mean:.{digits}f}"


def slug(name: str) -> str:
    """``name`` as a file-name part: runs of other characters than ``A-Za-z0-9._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


# ---- markdown links -------------------------------------------------------------------------------------------------
def relative_link(path: Path, root: Path) -> str:
    """Path of ``path`` relative to ``root`` as it goes into a markdown link."""
    return quote(path.relative_to(root).as_posix())


def image_link(alt: str, path: Path, root: Path) -> str:
    """Markdown image of ``path`` (relative to ``root``, the report's folder); brackets dropped from ``alt``."""
    return f"![{re.sub(r'[][]', '', alt)}]({relative_link(path, root)})"


# ---- leaderboard rows -----------------------------------------------------------------------------------------------
def interval_of(row: pd.Series, metric: str) -> tuple[float, float] | None:
    """The row's 95 % subject-bootstrap interval of ``metric`` (``None`` without finite ``:ci_low`` / ``:ci_high``)."""
    low, high = (pd.to_numeric(row.get(f"{metric}:{stat}", math.nan), errors="coerce")
                 for stat in ("ci_low", "ci_high"))
    return (float(low), float(high)) if is_finite(low) and is_finite(high) else None


def beats_random(row: pd.Series) -> str:
    """The row's ``beats_random`` (``true`` / ``false``), ``n.a.`` when absent or undefined."""
    value = str(row.get("beats_random", "")).strip().lower()
    return value if value in ("true", "false") else "n.a."


def entry_label(row: pd.Series) -> str:
    """The entry's name, with :data:`NOT_BEATING` when it does not beat ``random``."""
    return f"{row['method']} {NOT_BEATING}" if beats_random(row) == "false" else str(row["method"])


def sorted_block(block: pd.DataFrame, primary: str) -> pd.DataFrame:
    """Best first by the block's rank metric (:func:`group_primary`; NaN last), ties by method name."""
    metric = group_primary(block, primary)
    key = block.get(f"{metric}:mean", pd.Series(math.nan, index=block.index)).astype(float)
    order = sorted(block.index, key=lambda i: (not math.isfinite(key[i]), -key[i] if math.isfinite(key[i]) else 0.0,
                                               block.at[i, "method"]))
    return block.loc[order]


# ---- figures --------------------------------------------------------------------------------------------------------
def new_figure(rows: int, cols: int, panel: tuple[float, float], margins: tuple[float, float, float, float],
               gap: tuple[float, float] = (0.6, 0.6)) -> tuple[plt.Figure, np.ndarray]:
    """A grid of panels with sizes in inches: panel (w, h), margins (left, right, bottom, top), gaps (x, y).

    Fixed geometry instead of ``tight_layout``, which draws every figure once more (half of the report's time).
    """
    left, right, bottom, top = margins
    width = left + right + cols * panel[0] + (cols - 1) * gap[0]
    height = bottom + top + rows * panel[1] + (rows - 1) * gap[1]
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap[0] / panel[0], hspace=gap[1] / panel[1])
    return fig, axes


def save_figure(fig: plt.Figure, path: Path, tight: bool = False) -> None:
    """Write the PNG (``tight``: cropped to everything drawn, e.g. a legend outside the axes) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, **({"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}))
    plt.close(fig)
