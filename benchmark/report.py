"""Sweep report: ``report.md`` and PNG figures beside ``leaderboard.csv``, built from the sweep folder alone.

``write_report(S)`` reads ``S/leaderboard.csv`` and the run folders ``S/runs/<dataset>/<method>/seed_<n>/``
(``metrics.json``, ``curves.json``, ``figures/qualitative_<test set>.png``) and writes ``S/report.md`` with its
figures in ``S/figures/``. Per dataset: the headline table (mean ± std over seeds), the failures, one bar chart per
metric, ROC / PR curves and slice-score histograms (each method's lowest completed seed with a ``curves.json``),
the qualitative grids and, for methods that generate images, the generative quality (``report_generative.py``).
Images are referenced by paths relative to ``S``. The text is a function of the folder: its only date is the
modification time of the newest ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmark.families import MEAN, family_averages, family_of, family_table
from benchmark.io import atomic_write_text, read_json
from benchmark.leaderboard import (
    GENERATIVE_COLUMNS,
    group_primary,
    primary_metrics,
    read_leaderboard,
    split_variants,
)
from benchmark.markdown import markdown_table
from benchmark.naming import qualitative_name, variant_method

HEADLINE = (
    ("pixel AUROC", "pixel/auroc"),
    ("pixel AUPRC", "pixel/auprc"),
    ("best Dice (oracle)", "pixel/best_dice[oracle_test]"),
    ("Dice @ 5% healthy FPR", "calibrated/healthy_fpr@5%/dice"),
    ("sample AUROC", "sample/auroc"),
    ("sample AUROC vs healthy set", "sample/vs_healthy/auroc"),
)
DEFAULT_METRICS = ("pixel/auprc", "pixel/auroc", "pixel/best_dice[oracle_test]", "calibrated/healthy_fpr@5%/dice",
                   "sample/auroc")
FIXED_COLUMNS = frozenset({
    "method", "dataset", "test_set", "n_seeds", "seeds", "status", "failures", "rank", "wall_time_s",
    "train_time_s", "test_time_s", "n_parameters", "train_images_per_s", "inference_images_per_s", "precision",
    "devices", "evaluation", "postprocessing", "schema", "normative/feature_extractor", "normative/rqi_reading",
    *GENERATIVE_COLUMNS,
})
FAILED_TEST_SET = "-"  # test_set of the leaderboard row of a method x dataset without any completed run
FIGURES = "figures"
NA = "n/a"
SEED_DIR = re.compile(r"seed_(-?\d+)")

READING_GUIDE = """\
## How to read the tables

Every value is the mean ± standard deviation over the completed seeds (only the mean with one seed), 3 decimals;
the best mean of each test set is in bold. Pixels are scored inside the roi (brain / organ mask) only.

- **pixel AUROC / AUPRC**: threshold-free ranking of lesion against healthy roi pixels.
- **best Dice (oracle)**: the highest Dice over all thresholds, the threshold chosen on the *test labels*: an upper
  bound that no deployed method can reach, not a result.
- **Dice @ 5% healthy FPR**: Dice at the threshold that flags 5 % of the healthy roi pixels of the healthy
  *validation* split; no test label is used, so this is the number a deployed method would get.
- **sample AUROC**: each slice's anomaly score against its label (anomalous when its lesion area reaches the
  dataset's minimum).
- **sample AUROC vs healthy set**: the anomalous slices of this test set against every slice of the `healthy`
  test set (the leave-one-class-out protocol: anomalous images against held-out normal images).
- **`method[variant]`**: one scoring rule of a method that offers several (for example `vae[combi]`), trained
  once and evaluated per rule.
- **rank**: the leaderboard's rank within the dataset and test set (1 = best).

Test sets without lesions (healthy) have no pixel metrics and are left out of the tables; their score
distributions are in the histograms. Figures of curves and scores show one seed per method (named in the text).
"""


# ---- loading --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One run folder; ``metrics`` is its parsed ``metrics.json`` (``None`` when missing or unreadable)."""

    dataset: str
    method: str
    seed: int
    path: Path
    metrics: dict[str, Any] | None
    variant: str | None = None  # score variant of the method (``method`` is then ``<name>[<variant>]``)

    @property
    def status(self) -> str:
        """``completed``, ``failed`` (any other recorded status) or ``unfinished`` (no readable metrics.json)."""
        if self.metrics is None:
            return "unfinished"
        return "completed" if self.metrics.get("status") == "completed" else "failed"

    def result(self, test_set: str) -> dict[str, Any]:
        """This run's nested metrics of one test set (empty when absent)."""
        results = (self.metrics or {}).get("test_sets")
        entry = results.get(test_set) if isinstance(results, dict) else None
        return entry if isinstance(entry, dict) else {}


@dataclass(frozen=True)
class Sweep:
    root: Path
    board: pd.DataFrame
    runs: tuple[Run, ...]

    def datasets(self) -> list[str]:
        return _unique([*self.board["dataset"], *sorted(run.dataset for run in self.runs)])

    def rows(self, dataset: str) -> pd.DataFrame:
        """Leaderboard rows of a dataset with a test set (the failed method x dataset rows left out)."""
        rows = self.board[self.board["dataset"] == dataset]
        return rows[rows["test_set"] != FAILED_TEST_SET]

    def methods(self, dataset: str) -> list[str]:
        board = self.board[self.board["dataset"] == dataset]["method"]
        return sorted({*board, *(run.method for run in self.runs if run.dataset == dataset)})

    def test_sets(self, dataset: str) -> list[str]:
        names = list(self.rows(dataset)["test_set"])
        for run in self.completed(dataset):
            names += list((run.metrics or {}).get("test_sets") or {})
        return _unique(names)

    def completed(self, dataset: str) -> list[Run]:
        return [run for run in self.runs if run.dataset == dataset and run.status == "completed"]


CurveRuns = dict[str, tuple[Run, dict[str, Any]]]  # method -> the run shown, its curves.json "pixel" entry
Qualitative = dict[tuple[str, str], tuple[Run, Path, np.ndarray]]  # (method, test set) -> run, png, its pixels


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(value) for value in values))


def _variant_runs(run: Run) -> list[Run]:
    """A completed run of a method with score variants as one ``Run`` per variant (its own metrics)."""
    if run.status != "completed":
        return [run]
    return [Run(run.dataset, variant_method(run.method, name), run.seed, run.path, metrics, name)
            for name, metrics in split_variants(run.metrics).items()]


def find_runs(sweep_dir: Path) -> tuple[Run, ...]:
    """Every ``runs/<dataset>/<method>/seed_<n>/`` folder (one ``Run`` per score variant), sorted by dataset,
    method and seed."""
    runs = []
    for path in (sweep_dir / "runs").glob("*/*/seed_*"):
        match = SEED_DIR.fullmatch(path.name)
        if path.is_dir() and match:
            metrics = read_json(path / "metrics.json")
            runs += _variant_runs(Run(path.parent.parent.name, path.parent.name, int(match.group(1)), path, metrics))
    return tuple(sorted(runs, key=lambda run: (run.dataset, run.method, run.seed)))


def load_sweep(sweep_dir: str | Path) -> Sweep:
    root = Path(sweep_dir)
    return Sweep(root, read_leaderboard(root / "leaderboard.csv"), find_runs(root))


# ---- formatting -----------------------------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``"0.912 ± 0.010"``; only the mean when the std is NaN (one seed); ``n/a`` without a mean."""
    if not _finite(mean):
        return NA
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if _finite(std) else f"{mean:.{digits}f}"


def _format_rank(rank: Any) -> str:
    if not _finite(rank):
        return NA
    return str(int(rank)) if float(rank).is_integer() else f"{rank:.1f}"


def _link(path: Path, root: Path) -> str:
    """Path of ``path`` relative to ``root`` as it goes into a markdown link."""
    return quote(path.relative_to(root).as_posix())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _distinct(board: pd.DataFrame, column: str) -> list[str]:
    if column not in board.columns:
        return []
    return [value for value in _unique(board[column]) if value.strip() and value.lower() != "nan"]


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    palette = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(i % palette.N) for i, method in enumerate(methods)}


# ---- header and tables ----------------------------------------------------------------------------------------------
def _newest_result(runs: Iterable[Run]) -> str:
    times = [(run.path / "metrics.json").stat().st_mtime for run in runs if (run.path / "metrics.json").is_file()]
    if not times:
        return NA
    return datetime.fromtimestamp(max(times), tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def version_columns(board: pd.DataFrame) -> list[str]:
    """Software-version columns: any column naming a version, and the unknown columns after ``postprocessing``."""
    columns = list(board.columns)
    after = columns.index("postprocessing") + 1 if "postprocessing" in columns else len(columns)
    return [column for i, column in enumerate(columns) if column not in FIXED_COLUMNS
            and not column.endswith((":mean", ":std")) and ("version" in column.lower() or i >= after)]


def _versions(sweep: Sweep) -> str:
    items = []
    for column in version_columns(sweep.board):
        name = re.sub(r"(?i)^versions?[/:._-]|[/:._-]versions?$", "", column)
        values = _distinct(sweep.board, column)
        if values:
            items.append(f"{name} {' / '.join(values)}")
    if not items:  # no version columns: the newest completed run's record
        runs = [run for run in sweep.runs if run.status == "completed"]
        newest = max(runs, key=lambda run: (run.path / "metrics.json").stat().st_mtime, default=None)
        versions = (newest.metrics or {}).get("versions") if newest else None
        items = [f"{name} {value}" for name, value in versions.items()] if isinstance(versions, dict) else []
    return ", ".join(items) or NA


def _header(sweep: Sweep, primary: str, guide: str = READING_GUIDE) -> list[str]:
    counts = {status: sum(run.status == status for run in sweep.runs) for status in ("completed", "failed")}
    unfinished = len(sweep.runs) - sum(counts.values())
    runs = f"{counts['completed']} completed, {counts['failed']} failed"
    if unfinished:
        runs += f", {unfinished} without a readable metrics.json (unfinished or crashed)"
    labels = {"evaluation": "profile", "postprocessing": "post-processing", "precision": "precision",
              "devices": "devices"}
    setup = [f"{label} `{' / '.join(values)}`" for column, label in labels.items()
             if (values := _distinct(sweep.board, column))]
    return [
        f"# NormBench report: `{sweep.root.name}`",
        "",
        f"- **Newest result**: {_newest_result(sweep.runs)} (modification time of the newest `metrics.json`)",
        f"- **Runs**: {runs}",
        f"- **Evaluation**: {', '.join(setup) or NA}",
        f"- **Software**: {_versions(sweep)}",
        f"- **Primary metric**: `{primary}` (rows sorted by it, best first; with fallbacks, by the first one defined "
        "for the test set)",
        "- **Leaderboard**: [leaderboard.csv](leaderboard.csv)",
        "",
        guide,
    ]


def _mean_std(row: pd.Series, metric: str) -> tuple[float, float]:
    return float(row.get(f"{metric}:mean", math.nan)), float(row.get(f"{metric}:std", math.nan))


def _sorted_block(block: pd.DataFrame, primary: str) -> pd.DataFrame:
    """Best first by the block's rank metric (:func:`group_primary`; NaN last), ties by method name."""
    metric = group_primary(block, primary)
    key = block.get(f"{metric}:mean", pd.Series(math.nan, index=block.index)).astype(float)
    order = sorted(block.index, key=lambda i: (not math.isfinite(key[i]), -key[i] if math.isfinite(key[i]) else 0.0,
                                               block.at[i, "method"]))
    return block.loc[order]


def leaderboard_table(rows: pd.DataFrame, primary: str) -> str | None:
    """Markdown table of the headline columns (plus the primary metrics that are not among them), one dataset."""
    columns = list(HEADLINE)
    columns += [(metric, metric) for metric in primary_metrics(primary)
                if metric not in {m for _, m in HEADLINE}]
    body = []
    for test_set in _unique(rows["test_set"]):
        block = _sorted_block(rows[rows["test_set"] == test_set], primary)
        best = {metric: max((f"{m:.3f}" for m in block.get(f"{metric}:mean", []) if _finite(m)), key=float,
                            default=None) for _, metric in columns}
        for _, row in block.iterrows():
            values = [_mean_std(row, metric) for _, metric in columns]
            if not any(_finite(mean) for mean, _ in values):
                continue
            cells = [format_mean_std(mean, std) for mean, std in values]
            cells = [f"**{cell}**" if len(block) > 1 and _finite(mean) and f"{mean:.3f}" == best[metric] else cell
                     for cell, (mean, _), (_, metric) in zip(cells, values, columns, strict=True)]
            body.append([row["method"], test_set, *cells, _format_rank(row.get("rank"))])
    if not body:
        return None
    header = ["method", "test set", *(title for title, _ in columns), "rank"]
    return markdown_table(header, body, "ll" + "r" * (len(columns) + 1))


def _failure_reason(metrics: dict[str, Any]) -> str:
    """One line from a failed run's record (``error`` as text or as ``{type, message}``)."""
    error = next((metrics[key] for key in ("error", "exception", "message", "traceback") if metrics.get(key)), None)
    if isinstance(error, dict):
        error = ": ".join(str(error[key]) for key in ("type", "message") if error.get(key)) or json.dumps(error)
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    if not lines:
        return f"status {metrics.get('status')!r}, no error recorded"
    text = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return text if len(text) <= 300 else text[:297] + "..."


def failures(sweep: Sweep, dataset: str) -> list[str]:
    """Markdown list items: every run of the dataset that did not complete, and the leaderboard's failure notes."""
    items, covered = [], set()
    for run in sweep.runs:
        if run.dataset != dataset or run.status == "completed":
            continue
        covered.add(run.method)
        reason = _failure_reason(run.metrics) if run.metrics else "no readable metrics.json (unfinished or crashed)"
        items.append(f"- `{run.method}` seed {run.seed}: {reason}")
    board = sweep.board[sweep.board["dataset"] == dataset]
    for method in _unique(board["method"]):
        if method in covered:
            continue
        rows = board[board["method"] == method]
        notes = [note for note in _distinct(rows, "failures") if note not in ("0", "0.0", "[]")]
        if notes or "failed" in _distinct(rows, "status"):
            items.append(f"- `{method}`: {'; '.join(notes) or 'failed'} (leaderboard)")
    return items


# ---- figures --------------------------------------------------------------------------------------------------------
def _figure(rows: int, cols: int, panel: tuple[float, float], margins: tuple[float, float, float, float],
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


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _has_lesions(result: dict[str, Any]) -> bool:
    pixel, sample = result.get("pixel") or {}, result.get("sample") or {}
    counts = (pixel.get("n_lesion_pixels"), sample.get("n_anomalous_slices"), result.get("n_lesion_pixels"))
    return any(_finite(count) and count > 0 for count in counts)


def anomalous_test_sets(sweep: Sweep, dataset: str) -> list[str]:
    """Test sets with lesions: by any completed run's metrics.json, or a finite pixel AUROC in the leaderboard."""
    rows, runs = sweep.rows(dataset), sweep.completed(dataset)
    scored = set(rows.loc[rows["pixel/auroc:mean"].notna(), "test_set"]) if "pixel/auroc:mean" in rows else set()
    return [name for name in sweep.test_sets(dataset)
            if name in scored or any(_has_lesions(run.result(name)) for run in runs)]


def plot_metric_bars(rows: pd.DataFrame, metric: str, methods: Sequence[str], colors: dict[str, Any],
                     title: str, path: Path) -> bool:
    """Bars of ``metric`` (mean, std error bars) grouped by test set; ``False`` (no file) when nothing is finite."""
    mean_column, std_column = f"{metric}:mean", f"{metric}:std"
    if mean_column not in rows.columns:
        return False
    finite = rows[rows[mean_column].notna()]
    test_sets = [name for name in _unique(rows["test_set"]) if name in set(finite["test_set"])]
    methods = [method for method in methods if method in set(finite["method"])]
    if not test_sets:
        return False
    width = 0.8 / len(methods)
    legend = 0.6 + 0.07 * max(len(method) for method in methods)
    fig, axes = _figure(1, 1, (max(3.0, len(test_sets) * (0.5 + 0.3 * len(methods))), 2.8), (0.8, legend, 0.5, 0.4))
    ax = axes[0][0]
    for i, method in enumerate(methods):
        values = [rows[(rows["test_set"] == name) & (rows["method"] == method)] for name in test_sets]
        means = np.array([float(v[mean_column].iloc[0]) if len(v) else math.nan for v in values])
        stds = np.array([float(v[std_column].iloc[0]) if len(v) and std_column in v else math.nan for v in values])
        x = np.arange(len(test_sets)) + (i - (len(methods) - 1) / 2) * width
        ok = np.isfinite(means)
        if ok.any():
            ax.bar(x[ok], means[ok], width, yerr=np.nan_to_num(stds[ok]), capsize=3, color=colors[method],
                   label=method)
    ax.set_xticks(np.arange(len(test_sets)), test_sets)
    ax.set_ylabel(metric)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path)
    return True


def curve_runs(sweep: Sweep, dataset: str) -> CurveRuns:
    """Per method, its lowest completed seed with a readable ``curves.json`` and that file's ``pixel`` entry."""
    chosen: CurveRuns = {}
    for run in sweep.completed(dataset):
        if run.method not in chosen:
            curves = read_json(run.path / "curves.json") or {}
            pixel = curves.get("pixel") if run.variant is None else (curves.get("variants") or {}).get(run.variant)
            if isinstance(pixel, dict):
                chosen[run.method] = (run, pixel)
    return chosen


def _xy(curve: Any, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite points of a stored curve (empty arrays when the curve is missing or malformed)."""
    if not isinstance(curve, dict):
        return np.empty(0), np.empty(0)
    try:
        x, y = (np.asarray(curve.get(key) or [], dtype=float).ravel() for key in (x_key, y_key))
    except (TypeError, ValueError):
        return np.empty(0), np.empty(0)
    n = min(len(x), len(y))
    keep = np.isfinite(x[:n]) & np.isfinite(y[:n])
    return x[:n][keep], y[:n][keep]


def _value_label(name: str, value: Any) -> str:
    return f"{name} {value:.3f}" if _finite(value) else f"{name} {NA}"


def plot_curves(chosen: CurveRuns, test_set: str, colors: dict[str, Any], title: str,
                path: Path) -> bool:
    """Pixel ROC and PR curves of one test set, one line per method; ``False`` (no file) without any curve."""
    fig, axes = _figure(1, 2, (3.9, 3.4), (0.6, 0.2, 0.55, 0.35), (0.7, 0.0))
    roc_ax, pr_ax = axes[0]
    drawn, prevalence = False, None
    for method, (run, pixel) in chosen.items():
        entry, result = pixel.get(test_set) or {}, run.result(test_set)
        if not isinstance(entry, dict) or (result and not _has_lesions(result)):
            continue
        scores = result.get("pixel") or {}
        fpr, tpr = _xy(entry.get("roc"), "fpr", "tpr")
        recall, precision = _xy(entry.get("pr"), "recall", "precision")
        label = f"{method}, seed {run.seed}"
        if len(fpr) >= 2:
            roc_ax.plot(fpr, tpr, color=colors[method], label=f"{label} ({_value_label('AUROC', scores.get('auroc'))})")
            drawn = True
        if len(recall) >= 2:
            pr_ax.plot(recall, precision, color=colors[method],
                       label=f"{label} ({_value_label('AUPRC', scores.get('auprc'))})")
            drawn = True
        if prevalence is None and _finite(scores.get("n_lesion_pixels")) and _finite(scores.get("n_roi_pixels")):
            prevalence = scores["n_lesion_pixels"] / max(scores["n_roi_pixels"], 1)
    if not drawn:
        plt.close(fig)
        return False
    roc_ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8, label="chance")
    if prevalence is not None:
        pr_ax.axhline(prevalence, color="0.6", linestyle="--", linewidth=0.8, label="chance (lesion prevalence)")
    for ax, (xlabel, ylabel), name in ((roc_ax, ("FPR", "TPR"), "ROC"), (pr_ax, ("recall", "precision"), "PR")):
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=f"{title}: pixel {name}")
        ax.legend(fontsize=7, loc="lower right" if name == "ROC" else "upper right")
    _save(fig, path)
    return True


def _scores(pixel: dict[str, Any], test_set: str) -> dict[str, np.ndarray]:
    entry = pixel.get(test_set)
    stored = entry.get("sample_scores") if isinstance(entry, dict) else None
    scores = {}
    for label in ("normal", "anomalous"):
        try:
            values = np.asarray((stored or {}).get(label) or [], dtype=float).ravel()
        except (TypeError, ValueError):
            values = np.empty(0)
        scores[label] = values[np.isfinite(values)]
    return scores


def plot_score_histograms(chosen: CurveRuns, test_sets: Sequence[str], title: str,
                          path: Path) -> bool:
    """Small multiples (methods x test sets) of slice-score histograms, normal vs anomalous; ``False`` if none."""
    scores = {(m, t): _scores(pixel, t) for m, (_, pixel) in chosen.items() for t in test_sets}
    has = {key: any(len(v) for v in value.values()) for key, value in scores.items()}
    methods = [m for m in chosen if any(has[m, t] for t in test_sets)]
    columns = [t for t in test_sets if any(has[m, t] for m in methods)]
    if not methods:
        return False
    fig, axes = _figure(len(methods), len(columns), (2.8, 1.7), (0.45, 0.15, 0.35, 0.6), (0.45, 0.5))
    for (i, method), (j, test_set) in ((a, b) for a in enumerate(methods) for b in enumerate(columns)):
        ax, values = axes[i][j], scores[method, test_set]
        ax.set_title(f"{method} (seed {chosen[method][0].seed}) / {test_set}", fontsize=8)
        ax.tick_params(labelsize=7)
        if not has[method, test_set]:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            continue
        pooled = np.concatenate(list(values.values()))
        lo, hi = float(pooled.min()), float(pooled.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
        for label, color in (("normal", "tab:blue"), ("anomalous", "tab:red")):
            if len(values[label]):
                ax.hist(values[label], bins=bins, density=True, histtype="stepfilled", alpha=0.55, color=color,
                        label=f"{label} ({len(values[label])})")
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return True


def _read_image(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        return mpimg.imread(path)
    except (OSError, ValueError, SyntaxError):
        return None


def qualitative_images(sweep: Sweep, dataset: str, test_sets: Sequence[str]) -> Qualitative:
    """Per method x test set: the lowest completed seed's readable ``figures/qualitative_<test set>.png``."""
    found: Qualitative = {}
    for run in sweep.completed(dataset):
        for test_set in test_sets:
            path = run.path / FIGURES / qualitative_name(test_set, run.variant)
            if (run.method, test_set) not in found and (image := _read_image(path)) is not None:
                found[run.method, test_set] = (run, path, image)
    return found


def plot_qualitative(found: Qualitative, methods: Sequence[str],
                     test_sets: Sequence[str], title: str, path: Path) -> bool:
    """All qualitative grids of a dataset in one figure: rows = methods, columns = test sets."""
    methods = [m for m in methods if any((m, t) in found for t in test_sets)]
    test_sets = [t for t in test_sets if any((m, t) in found for m in methods)]
    if not methods:
        return False
    aspect = max(image.shape[0] / image.shape[1] for _, _, image in found.values())
    width = max(2.4, 3.6 / len(test_sets))  # room for the title
    fig, axes = _figure(len(methods), len(test_sets), (width, min(width * aspect, 6.0)), (0.1, 0.1, 0.1, 0.7),
                        (0.2, 0.35))
    for (i, method), (j, test_set) in ((a, b) for a in enumerate(methods) for b in enumerate(test_sets)):
        ax = axes[i][j]
        ax.set_axis_off()
        if (method, test_set) in found:
            run, _, image = found[method, test_set]
            ax.imshow(image, cmap="gray", interpolation="nearest")
            ax.set_title(f"{method} (seed {run.seed}) / {test_set}", fontsize=8)
    fig.suptitle(f"{title}\ninput | reconstruction | anomaly map | mask", fontsize=9)
    _save(fig, path)
    return True


# ---- sections -------------------------------------------------------------------------------------------------------
def _image(alt: str, path: Path, root: Path) -> str:
    return f"![{re.sub(r'[][]', '', alt)}]({_link(path, root)})"


def _table_section(sweep: Sweep, dataset: str, primary: str) -> list[str]:
    table = leaderboard_table(sweep.rows(dataset), primary)
    return ["### Leaderboard", "", table or "No completed run with lesion metrics.", ""]


def _number(value: Any, digits: int) -> str:
    return NA if value is None or pd.isna(value) else f"{float(value):,.{digits}f}"


def _cost_section(sweep: Sweep, dataset: str) -> list[str]:
    """Parameters, training time and throughput, and inference time per image of each method (means over seeds;
    for diffusion methods the inference time is the sampling time of their reverse chains)."""
    rows = sweep.rows(dataset)
    if rows.empty:
        return []
    rows = rows.assign(method=rows["method"].str.replace(r"\[.*\]$", "", regex=True)).drop_duplicates("method")
    table = []  # one row per trained model: the score variants of a method share its cost
    for _, row in rows.sort_values("method").iterrows():
        per_second = row.get("inference_images_per_s")
        per_image = 1000.0 / per_second if per_second and not pd.isna(per_second) and per_second > 0 else None
        table.append([row["method"], _number(row.get("n_parameters"), 0), _number(row.get("train_time_s"), 0),
                      _number(row.get("train_images_per_s"), 1), _number(per_image, 1),
                      str(row.get("precision", NA)), _number(row.get("devices"), 0)])
    header = ["method", "parameters", "training (s)", "training images/s", "inference ms/image", "precision",
              "devices"]
    return ["### Cost", "", "Means over seeds. Inference: the test sets' images through `predict_anomaly` "
            "(diffusion methods: their reverse chains), evaluation included.", "",
            markdown_table(header, table, "lrrrrlr"), ""]


def _failures_section(sweep: Sweep, dataset: str) -> list[str]:
    items = failures(sweep, dataset)
    return ["### Failures", "", *items, ""] if items else []


def _bars_section(sweep: Sweep, dataset: str, metrics: Sequence[str], colors: dict[str, Any]) -> list[str]:
    lines, missing = ["### Metrics per test set", "", "Bars: mean over seeds; error bars: std over seeds.", ""], []
    rows, methods = sweep.rows(dataset), sweep.methods(dataset)
    for metric in metrics:
        path = sweep.root / FIGURES / f"bars_{_slug(dataset)}_{_slug(metric)}.png"
        if plot_metric_bars(rows, metric, methods, colors, f"{dataset}: {metric}", path):
            lines += [_image(f"{dataset} {metric}", path, sweep.root), ""]
        else:
            missing.append(f"`{metric}`")
    if missing:
        lines += [f"No finite values (or no leaderboard column) for {', '.join(missing)}.", ""]
    return lines


def _seeds_note(chosen: CurveRuns, methods: Sequence[str]) -> str:
    shown = ", ".join(f"`{method}` seed {run.seed}" for method, (run, _) in chosen.items()) or "none"
    absent = [f"`{method}`" for method in methods if method not in chosen]
    note = f"One seed per method (the lowest completed seed with a curves.json): {shown}."
    return note + (f" No curves.json for {', '.join(absent)}." if absent else "")


def _curves_section(sweep: Sweep, dataset: str, chosen: CurveRuns,
                    colors: dict[str, Any]) -> list[str]:
    lines = ["### ROC and PR curves", "", _seeds_note(chosen, sweep.methods(dataset)), ""]
    for test_set in anomalous_test_sets(sweep, dataset):
        path = sweep.root / FIGURES / f"curves_{_slug(dataset)}_{_slug(test_set)}.png"
        if plot_curves(chosen, test_set, colors, f"{dataset} / {test_set}", path):
            lines += [_image(f"{dataset} {test_set} ROC and PR", path, sweep.root), ""]
    return lines


def _scores_section(sweep: Sweep, dataset: str, chosen: CurveRuns) -> list[str]:
    path = sweep.root / FIGURES / f"scores_{_slug(dataset)}.png"
    if not plot_score_histograms(chosen, sweep.test_sets(dataset), f"{dataset}: slice anomaly scores", path):
        return []
    return ["### Anomaly-score distributions", "",
            "Slice anomaly scores of normal (blue) and anomalous (red) slices, density per label, same seeds as the "
            "curves.", "", _image(f"{dataset} score histograms", path, sweep.root), ""]


def _qualitative_section(sweep: Sweep, dataset: str) -> list[str]:
    test_sets, methods = anomalous_test_sets(sweep, dataset), sweep.methods(dataset)
    found = qualitative_images(sweep, dataset, test_sets)
    if not found:
        return []
    lines = ["### Qualitative examples", "",
             "Each grid: one slice per row; columns input | reconstruction (blank when the method has none) |",
             "anomaly map (scaled per grid) | ground-truth mask; the lowest completed seed of each method.", ""]
    combined = sweep.root / FIGURES / f"qualitative_{_slug(dataset)}.png"
    if plot_qualitative(found, methods, test_sets, f"{dataset}: qualitative examples", combined):
        lines += [f"All methods in one figure: [{combined.name}]({_link(combined, sweep.root)})", ""]
    rows = []
    for method in methods:
        shown = [found.get((method, t)) for t in test_sets]
        if any(shown):
            seeds = ", ".join(_unique(str(entry[0].seed) for entry in shown if entry))
            rows.append([method, seeds, *(_image(f"{method} {t}", entry[1], sweep.root) if entry else NA
                                          for t, entry in zip(test_sets, shown, strict=True))])
    return [*lines, markdown_table(["method", "seed", *test_sets], rows), ""]


def _families_section(sweep: Sweep, primary: str) -> list[str]:
    """Averages over dataset variants (``digits@held_out_class=0..9``): per-dataset seed means averaged, one table
    per family, rows ordered by the family's rank metric."""
    titles = {metric: title for title, metric in HEADLINE}
    lines = []
    for family in _unique(family_of(name) for name in sweep.board["dataset"]):
        rows = sweep.board[[family_of(name) == family for name in sweep.board["dataset"]]]
        first = group_primary(rows, primary)
        metrics = [first, *(metric for metric in [*primary_metrics(primary), *titles] if metric != first)]
        averages = family_averages(rows, list(dict.fromkeys(metrics)))
        averages = averages[averages["n_datasets"] > 0]  # e.g. the healthy test sets of a sample-level family
        shown = [m for m in dict.fromkeys(metrics) if averages[f"{m}:{MEAN}"].notna().any()]
        table = family_table(averages, [(titles.get(m, m), m) for m in shown])
        if table is not None:
            lines += [f"### Family `{family}`", "", table, ""]
    if not lines:
        return []
    return ["## Averages over dataset variants", "",
            "Datasets of one sweep grid entry (names `<config>@<argument>=<value>`) form a family; each value is the "
            "mean ± std over the family's datasets of the per-dataset means over seeds.", "", *lines]


def write_report(sweep_dir: str | Path, primary: str = "pixel/auprc", metrics: Sequence[str] | None = None) -> Path:
    """Write ``<sweep_dir>/report.md`` and its PNG figures in ``<sweep_dir>/figures/``; return the report's path.

    Needs ``<sweep_dir>/leaderboard.csv``; run folders, curves and qualitative grids are used where present.
    ``primary`` orders the table rows (higher is better); ``metrics`` chooses the bar charts (``DEFAULT_METRICS``).
    """
    from benchmark.report_generative import GENERATIVE_GUIDE, generative_section, has_generative  # uses this module
    from benchmark.report_normative import NORMATIVE_GUIDE, has_normative, normative_section

    sweep = load_sweep(sweep_dir)
    colors = _colors(sorted({method for dataset in sweep.datasets() for method in sweep.methods(dataset)}))
    guide = READING_GUIDE + (f"\n{NORMATIVE_GUIDE}" if has_normative(sweep) else "") + \
        (f"\n{GENERATIVE_GUIDE}" if has_generative(sweep) else "")
    lines = _header(sweep, primary, guide) + _families_section(sweep, primary)
    for dataset in sweep.datasets():
        chosen = curve_runs(sweep, dataset)
        lines += [f"## Dataset `{dataset}`", ""]
        lines += _table_section(sweep, dataset, primary) + _cost_section(sweep, dataset)
        lines += _failures_section(sweep, dataset)
        lines += _bars_section(sweep, dataset, metrics or DEFAULT_METRICS, colors)
        lines += _curves_section(sweep, dataset, chosen, colors) + _scores_section(sweep, dataset, chosen)
        lines += _qualitative_section(sweep, dataset) + normative_section(sweep, dataset)
        lines += generative_section(sweep, dataset)
    path = sweep.root / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
