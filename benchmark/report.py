"""Sweep report: ``report.md`` and PNG figures beside ``leaderboard.csv``, built from the sweep folder alone.

``write_report(S)`` reads ``S/leaderboard.csv`` and the run folders ``S/runs/<dataset>/<method>/seed_<n>/``
(``metrics.json``, ``curves.json``, ``figures/qualitative_<test set>.npz``) and writes ``S/report.md`` with its
figures in ``S/figures/``. Per dataset: the headline table (mean with the subject-bootstrap 95 % interval where the
leaderboard has one, else mean ± std over seeds; entries that do not beat ``random`` marked), the failures, one
forest plot per test set (``report_forest.py``), ROC / PR curves of the leading entries and the baselines and
slice-score histograms (each entry's lowest completed seed with a ``curves.json``), the qualitative slices of every
entry (``report_qualitative.py``) and, for methods that generate images, the generative quality
(``report_generative.py``). Images are referenced by paths relative to ``S``. The text is a function of the
folder: its only date is the modification time of the newest ``metrics.json``.

Layering: this module imports its sections; they and it share ``report_sweep.py`` (the sweep folder: runs, test
sets) and ``report_common.py`` (constants, figures, slugs and image links, formatting); no section imports this
module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmark.families import MEAN, family_averages, family_of, family_table
from benchmark.io import atomic_write_text, read_json
from benchmark.leaderboard import GENERATIVE_COLUMNS, group_primary, primary_metrics
from benchmark.markdown import markdown_table
from benchmark.report_common import (
    BASELINES,
    FIGURES,
    HEADLINE,
    NA,
    NOT_BEATING,
    REFERENCE,
    entry_label,
    format_mean_std,
    image_link,
    interval_of,
    is_finite,
    new_figure,
    save_figure,
    slug,
    sorted_block,
    unique,
)
from benchmark.report_forest import forest_section
from benchmark.report_generative import GENERATIVE_GUIDE, generative_section, has_generative
from benchmark.report_normative import NORMATIVE_GUIDE, has_normative, normative_section
from benchmark.report_qualitative import qualitative_section
from benchmark.report_sweep import Run, Sweep, anomalous_test_sets, has_lesions, load_sweep

DEFAULT_METRICS = ("pixel/auprc", "pixel/auroc", "calibrated/healthy_fpr@5%/dice")  # the forest plots' panels
FIXED_COLUMNS = frozenset({
    "method", "dataset", "test_set", "n_seeds", "seeds", "status", "failures", "rank", "wall_time_s",
    "train_time_s", "test_time_s", "n_parameters", "train_images_per_s", "inference_images_per_s", "precision",
    "devices", "evaluation", "postprocessing", "schema", "normative/feature_extractor", "normative/rqi_reading",
    *GENERATIVE_COLUMNS,
})
TOP_K = 5  # curves: the leading entries shown besides the baselines
NOT_BEATING_NOTE = f"{NOT_BEATING} does not beat random (paired subject bootstrap, p ≥ 0.05)."

READING_GUIDE = """\
## How to read the tables

Every value is the mean over the completed seeds, 3 decimals, with its 95 % subject-bootstrap interval
`[low, high]` where the leaderboard has one (pixel AUROC / AUPRC and the calibrated Dice: how much the number would
move on other test subjects), else ± the standard deviation over seeds (only the mean with one seed); the best
mean of each test set is in bold. `†` after a name: the entry does not beat `random` (paired subject
bootstrap on the test set's rank metric, p ≥ 0.05). Pixels are scored inside the roi (brain / organ mask) only.

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
distributions are in the histograms. Forest plots show every entry of a test set; curves only its leading entries
and the baselines; figures of curves and scores show one seed per entry (named in the text).
"""


CurveRuns = dict[str, tuple[Run, dict[str, Any]]]  # method -> the run shown, its curves.json "pixel" entry


# ---- formatting -----------------------------------------------------------------------------------------------------
def _format_rank(rank: Any) -> str:
    if not is_finite(rank):
        return NA
    return str(int(rank)) if float(rank).is_integer() else f"{rank:.1f}"


def _distinct(board: pd.DataFrame, column: str) -> list[str]:
    if column not in board.columns:
        return []
    return [value for value in unique(board[column]) if value.strip() and value.lower() != "nan"]


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


def format_value(row: pd.Series, metric: str, digits: int = 3) -> str:
    """``"0.053 [0.041, 0.066]"`` with an interval, else :func:`format_mean_std`."""
    mean, std = _mean_std(row, metric)
    interval = interval_of(row, metric)
    if interval is None or not is_finite(mean):
        return format_mean_std(mean, std, digits)
    return f"{mean:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def leaderboard_table(rows: pd.DataFrame, primary: str) -> str | None:
    """Markdown table of the headline columns (plus the primary metrics that are not among them), one dataset;
    entries that do not beat ``random`` are marked, with the mark's note under the table."""
    columns = list(HEADLINE)
    columns += [(metric, metric) for metric in primary_metrics(primary)
                if metric not in {m for _, m in HEADLINE}]
    body = []
    for test_set in unique(rows["test_set"]):
        block = sorted_block(rows[rows["test_set"] == test_set], primary)
        best = {metric: max((f"{m:.3f}" for m in block.get(f"{metric}:mean", []) if is_finite(m)), key=float,
                            default=None) for _, metric in columns}
        for _, row in block.iterrows():
            values = [_mean_std(row, metric) for _, metric in columns]
            if not any(is_finite(mean) for mean, _ in values):
                continue
            cells = [format_value(row, metric) for _, metric in columns]
            cells = [f"**{cell}**" if len(block) > 1 and is_finite(mean) and f"{mean:.3f}" == best[metric] else cell
                     for cell, (mean, _), (_, metric) in zip(cells, values, columns, strict=True)]
            body.append([entry_label(row), test_set, *cells, _format_rank(row.get("rank"))])
    if not body:
        return None
    header = ["method", "test set", *(title for title, _ in columns), "rank"]
    table = markdown_table(header, body, "ll" + "r" * (len(columns) + 1))
    marked = any(row[0].endswith(f" {NOT_BEATING}") for row in body)
    return table + (f"\n\n{NOT_BEATING_NOTE}" if marked else "")


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
    for method in unique(board["method"]):
        if method in covered:
            continue
        rows = board[board["method"] == method]
        notes = [note for note in _distinct(rows, "failures") if note not in ("0", "0.0", "[]")]
        if notes or "failed" in _distinct(rows, "status"):
            items.append(f"- `{method}`: {'; '.join(notes) or 'failed'} (leaderboard)")
    return items


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
    return f"{name} {value:.3f}" if is_finite(value) else f"{name} {NA}"


def curve_entries(block: pd.DataFrame, available: Iterable[str], primary: str, k: int = TOP_K) -> list[str]:
    """The entries whose curves a test set's figure shows: the ``k`` best by the test set's rank metric among the
    ``available`` ones (baselines not counted), then the baselines present (``random``, ``intensity``)."""
    available = set(available)
    ranked = [str(method) for method in sorted_block(block, primary)["method"] if method in available]
    return [m for m in ranked if m not in BASELINES][:k] + [m for m in BASELINES if m in available]


def _curve_style(method: str, position: int) -> dict[str, Any]:
    """Line style: the leading entries in tab10 colours by rank, the baselines grey and broken."""
    if method == REFERENCE:
        return {"color": "0.45", "linestyle": ":", "linewidth": 1.6}
    if method in BASELINES:
        return {"color": "0.15", "linestyle": "-.", "linewidth": 1.3}
    return {"color": matplotlib.colormaps["tab10"](position % 10), "linewidth": 1.6}


def plot_curves(chosen: CurveRuns, entries: Sequence[str], test_set: str, title: str, path: Path) -> bool:
    """Pixel ROC and PR curves of one test set, one line per entry of ``entries`` (in that order), one legend
    right of the axes; ``False`` (no file) without any curve."""
    fig, axes = new_figure(1, 2, (3.6, 3.3), (0.6, 0.2, 0.55, 0.35), (0.7, 0.0))
    roc_ax, pr_ax = axes[0]
    drawn, prevalence = False, None
    for position, method in enumerate(m for m in entries if m in chosen):
        run, pixel = chosen[method]
        entry, result = pixel.get(test_set) or {}, run.result(test_set)
        if not isinstance(entry, dict) or (result and not has_lesions(result)):
            continue
        scores = result.get("pixel") or {}
        fpr, tpr = _xy(entry.get("roc"), "fpr", "tpr")
        recall, precision = _xy(entry.get("pr"), "recall", "precision")
        label = (f"{method}, seed {run.seed}: {_value_label('AUROC', scores.get('auroc'))}, "
                 f"{_value_label('AUPRC', scores.get('auprc'))}")
        style = _curve_style(method, position)
        if len(fpr) >= 2 or len(recall) >= 2:
            roc_ax.plot(fpr, tpr, label=label, **style)
            pr_ax.plot(recall, precision, **style)
            drawn = True
        if prevalence is None and is_finite(scores.get("n_lesion_pixels")) and is_finite(scores.get("n_roi_pixels")):
            prevalence = scores["n_lesion_pixels"] / max(scores["n_roi_pixels"], 1)
    if not drawn:
        plt.close(fig)
        return False
    roc_ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8, label="chance (ROC diagonal)")
    if prevalence is not None:
        pr_ax.axhline(prevalence, color="0.7", linestyle="--", linewidth=0.8)
        roc_ax.plot([], [], color="0.7", linestyle="--", linewidth=0.8, label="chance (PR: lesion prevalence)")
    for ax, (xlabel, ylabel), name in ((roc_ax, ("FPR", "TPR"), "ROC"), (pr_ax, ("recall", "precision"), "PR")):
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=f"{title}: pixel {name}")
    handles, labels = roc_ax.get_legend_handles_labels()
    pr_ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.04, 1.0), frameon=False)
    save_figure(fig, path, tight=True)
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
    fig, axes = new_figure(len(methods), len(columns), (2.8, 1.7), (0.45, 0.15, 0.35, 0.6), (0.45, 0.5))
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
    save_figure(fig, path)
    return True


# ---- sections -------------------------------------------------------------------------------------------------------
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


def _seeds_note(chosen: CurveRuns, methods: Sequence[str]) -> str:
    shown = ", ".join(f"`{method}` seed {run.seed}" for method, (run, _) in chosen.items()) or "none"
    absent = [f"`{method}`" for method in methods if method not in chosen]
    note = f"One seed per method (the lowest completed seed with a curves.json): {shown}."
    return note + (f" No curves.json for {', '.join(absent)}." if absent else "")


def _curves_section(sweep: Sweep, dataset: str, chosen: CurveRuns, primary: str) -> list[str]:
    lines = ["### ROC and PR curves", "",
             f"Per test set the {TOP_K} leading entries by its rank metric (among those with curves) and the "
             f"baselines ({', '.join(f'`{m}`' for m in BASELINES)}, grey, broken lines); every entry is in the "
             "forest plots. " + _seeds_note(chosen, sweep.methods(dataset)), ""]
    rows = sweep.rows(dataset)
    for test_set in anomalous_test_sets(sweep, dataset):
        path = sweep.root / FIGURES / f"curves_{slug(dataset)}_{slug(test_set)}.png"
        entries = curve_entries(rows[rows["test_set"] == test_set], chosen, primary)
        if plot_curves(chosen, entries, test_set, f"{dataset} / {test_set}", path):
            lines += [image_link(f"{dataset} {test_set} ROC and PR", path, sweep.root), ""]
    return lines


def _scores_section(sweep: Sweep, dataset: str, chosen: CurveRuns) -> list[str]:
    path = sweep.root / FIGURES / f"scores_{slug(dataset)}.png"
    if not plot_score_histograms(chosen, sweep.test_sets(dataset), f"{dataset}: slice anomaly scores", path):
        return []
    return ["### Anomaly-score distributions", "",
            "Slice anomaly scores of normal (blue) and anomalous (red) slices, density per label, same seeds as the "
            "curves.", "", image_link(f"{dataset} score histograms", path, sweep.root), ""]


def _families_section(sweep: Sweep, primary: str) -> list[str]:
    """Averages over dataset variants (``digits@held_out_class=0..9``): per-dataset seed means averaged, one table
    per family, rows ordered by the family's rank metric."""
    titles = {metric: title for title, metric in HEADLINE}
    lines = []
    for family in unique(family_of(name) for name in sweep.board["dataset"]):
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

    Needs ``<sweep_dir>/leaderboard.csv``; run folders, curves and qualitative slices are used where present.
    ``primary`` orders the table rows, the forest plots and the curves (higher is better); ``metrics`` chooses the
    forest plots' panels (``DEFAULT_METRICS``; each test set's rank metric is always one).
    """
    sweep = load_sweep(sweep_dir)
    guide = READING_GUIDE + (f"\n{NORMATIVE_GUIDE}" if has_normative(sweep) else "") + \
        (f"\n{GENERATIVE_GUIDE}" if has_generative(sweep) else "")
    lines = _header(sweep, primary, guide) + _families_section(sweep, primary)
    for dataset in sweep.datasets():
        chosen = curve_runs(sweep, dataset)
        lines += [f"## Dataset `{dataset}`", ""]
        lines += _table_section(sweep, dataset, primary) + _cost_section(sweep, dataset)
        lines += _failures_section(sweep, dataset)
        lines += forest_section(sweep, dataset, primary, metrics or DEFAULT_METRICS)
        lines += _curves_section(sweep, dataset, chosen, primary) + _scores_section(sweep, dataset, chosen)
        lines += qualitative_section(sweep, dataset, primary) + normative_section(sweep, dataset)
        lines += generative_section(sweep, dataset)
    path = sweep.root / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
