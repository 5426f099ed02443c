"""Compare new results with a reference leaderboard: per-metric deltas, rank among the reference methods, figure.

``compare(new, against)``: ``new`` is a leaderboard CSV or a sweep folder (its leaderboard is built, not
written), ``against`` a leaderboard CSV (``results/reference/...``). Every new method is compared with every
reference method on every metric that both leaderboards hold, for every dataset x test set that both cover; a
method present in both is also compared with its own reference numbers (a rerun check). Only completed
numbers take part: rows of methods whose every seed failed (test set ``-``) are left out.

Where both leaderboards have a bootstrap interval for a metric (``<metric>:ci_low`` / ``:ci_high``: pixel AUROC,
AUPRC and calibrated Dice, see :mod:`benchmark.metrics.bootstrap`), the delta gets a ``verdict``: ``within noise``
when the two intervals overlap, else ``better`` or ``worse`` (higher is better for all of them); empty for other
metrics. Overlapping 95 % intervals are a conservative reading: a real but small difference can be called noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.io import atomic_write_text
from benchmark.leaderboard import NO_TEST_SET, build_leaderboard, read_leaderboard
from benchmark.markdown import markdown_table

KEYS = ["dataset", "test_set"]
REQUIRED_COLUMNS = ("method", "dataset", "test_set", "n_seeds")
HEADLINE = ("pixel/auroc", "pixel/auprc", "pixel/best_dice[oracle_test]", "calibrated/healthy_fpr@5%/dice",
            "sample/auroc")
DELTA_COLUMNS = ["dataset", "test_set", "metric", "new_method", "ref_method", "same_method", "new_mean", "new_std",
                 "new_ci_low", "new_ci_high", "new_n_seeds", "ref_mean", "ref_std", "ref_ci_low", "ref_ci_high",
                 "ref_n_seeds", "delta", "verdict"]
WITHIN_NOISE, BETTER, WORSE = "within noise", "better", "worse"


# ---- loading --------------------------------------------------------------------------------------------------
def _metrics(frame: pd.DataFrame) -> list[str]:
    return [column.removesuffix(":mean") for column in frame.columns if column.endswith(":mean")]


def load_leaderboard(source: str | Path, primary: str = "pixel/auprc") -> pd.DataFrame:
    """The completed rows of a leaderboard CSV, or of the leaderboard built from a sweep folder."""
    path = Path(source)
    if path.is_dir():
        frame = build_leaderboard(path, primary)
    elif path.is_file():
        frame = read_leaderboard(path)
    else:
        raise ValueError(f"{path}: no such leaderboard CSV or sweep folder")
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing or not _metrics(frame):
        what = f"missing column(s) {missing}" if missing else "no '<metric>:mean' column"
        raise ValueError(f"{path}: not a leaderboard ({what}); write one with `run_benchmark.py leaderboard SWEEP`")
    frame = frame[(frame["test_set"] != NO_TEST_SET) & (frame["n_seeds"] > 0)]
    duplicated = frame.duplicated(["method", *KEYS])
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise ValueError(f"{path}: more than one row for {first['method']} on {first['dataset']}/{first['test_set']}")
    return frame.reset_index(drop=True)


# ---- tables ---------------------------------------------------------------------------------------------------
def _column(frame: pd.DataFrame, name: str) -> pd.Series | float:
    return pd.to_numeric(frame[name], errors="coerce") if name in frame.columns else math.nan


def _long(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per method x dataset x test set x metric: mean, std, interval, n_seeds."""
    parts = [frame[["method", *KEYS, "n_seeds"]].assign(
        metric=metric, order=i, mean=frame[f"{metric}:mean"], std=_column(frame, f"{metric}:std"),
        ci_low=_column(frame, f"{metric}:ci_low"), ci_high=_column(frame, f"{metric}:ci_high"),
    ) for i, metric in enumerate(metrics)]
    return pd.concat(parts, ignore_index=True)


def verdict(new_low: float, new_high: float, ref_low: float, ref_high: float) -> str:
    """``within noise`` when the intervals overlap, else ``better`` / ``worse`` (higher is better); ``""`` when
    either interval is missing."""
    if any(pd.isna(value) for value in (new_low, new_high, ref_low, ref_high)):
        return ""
    if new_low > ref_high:
        return BETTER
    return WORSE if new_high < ref_low else WITHIN_NOISE


def delta_table(new: pd.DataFrame, ref: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Every new method against every reference method, per dataset x test set x metric: ``delta = new - ref``."""
    merged = _long(new, metrics).merge(_long(ref, metrics).drop(columns="order"), on=[*KEYS, "metric"],
                                       suffixes=("_new", "_ref"))
    merged = merged.rename(columns={f"{stat}_{side}": f"{side}_{stat}" for side in ("new", "ref")
                                    for stat in ("mean", "std", "ci_low", "ci_high", "n_seeds")})
    merged = merged.rename(columns={"method_new": "new_method", "method_ref": "ref_method"})
    merged["same_method"] = merged["new_method"] == merged["ref_method"]
    merged["delta"] = merged["new_mean"] - merged["ref_mean"]
    merged["verdict"] = [verdict(*values) for values in zip(merged["new_ci_low"], merged["new_ci_high"],
                                                            merged["ref_ci_low"], merged["ref_ci_high"], strict=True)]
    merged = merged.sort_values([*KEYS, "order", "new_method", "same_method", "ref_method"],
                                ascending=[True, True, True, True, False, True], kind="stable")
    return merged[DELTA_COLUMNS].reset_index(drop=True)


def _rank_row(row: pd.Series, ref: pd.DataFrame, primary: str) -> dict[str, object]:
    """Where one new method places among the other reference methods (a rerun does not compete with itself)."""
    column = f"{primary}:mean"
    others = ref[(ref["method"] != row["method"]) & np.isfinite(ref[column])]
    same = ref.loc[ref["method"] == row["method"], column]
    value = float(row[column])
    out: dict[str, object] = {"dataset": row["dataset"], "test_set": row["test_set"], "method": row["method"],
                              "metric": primary, "mean": value, "std": row.get(f"{primary}:std", math.nan)}
    if math.isfinite(value):
        position, total = 1 + int((others[column] > value).sum()), len(others) + 1
        out.update(position=position, n_ranked=total, rank=f"{position} of {total}")
    else:
        out.update(position=pd.NA, n_ranked=pd.NA, rank="n/a")
    best = others.loc[others[column].idxmax()] if len(others) else None
    out["best_ref_method"] = best["method"] if best is not None else None
    out["best_ref_mean"] = float(best[column]) if best is not None else math.nan
    out["same_method_ref_mean"] = float(same.iloc[0]) if len(same) else math.nan
    out["same_method_delta"] = value - out["same_method_ref_mean"]
    return out


def rank_table(new: pd.DataFrame, ref: pd.DataFrame, primary: str) -> pd.DataFrame:
    """Rank of each new method among the reference methods on the primary metric, per dataset x test set."""
    rows = []
    for (dataset, test_set), group in new.groupby(KEYS, sort=True):
        reference = ref[(ref["dataset"] == dataset) & (ref["test_set"] == test_set)]
        if len(reference):
            rows.extend(_rank_row(row, reference, primary) for _, row in group.sort_values("method").iterrows())
    frame = pd.DataFrame(rows)
    for column in ("position", "n_ranked"):
        frame[column] = frame[column].astype("Int64")
    return frame


# ---- markdown -------------------------------------------------------------------------------------------------
def _number(value: object, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{float(value):+.4f}" if signed else f"{float(value):.4f}"


def _text(value: object) -> str:
    return "-" if value is None or pd.isna(value) else str(value)


def _mean_std(mean: object, std: object) -> str:
    return _number(mean) if std is None or pd.isna(std) or pd.isna(mean) else f"{_number(mean)} ± {_number(std)}"


# ---- figure ---------------------------------------------------------------------------------------------------
def _bars(new: pd.DataFrame, ref: pd.DataFrame, primary: str) -> tuple[list[str], list[tuple[str, pd.DataFrame]]]:
    """Groups (dataset / test set with a finite primary value) and bar series (label, rows indexed by group)."""
    column = f"{primary}:mean"
    both = pd.concat([new, ref])
    finite = both[np.isfinite(both[column])]
    shared = new[KEYS].merge(ref[KEYS]).drop_duplicates().merge(finite[KEYS].drop_duplicates())
    groups = [f"{d}\n{t}" for d, t in sorted(shared.itertuples(index=False, name=None))]
    stats = [c for c in (column, f"{primary}:std") if c in both.columns]
    series = []
    for label, frame in (("reference", ref), ("new", new)):
        frame = frame[["method", *stats]].set_index(frame["dataset"] + "\n" + frame["test_set"])
        for method, rows in frame.groupby("method", sort=True):
            series.append((f"{method} ({label})", rows.reindex(groups)))
    return groups, series


def plot_primary(new: pd.DataFrame, ref: pd.DataFrame, primary: str, path: Path) -> None:
    """Grouped bars of the primary metric per dataset / test set; error bars: std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without touching pyplot's global backend
    from matplotlib.figure import Figure

    groups, series = _bars(new, ref, primary)
    fig = Figure(figsize=(max(6.0, 1.0 + 0.35 * len(groups) * max(len(series), 1)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    methods = sorted({label.rsplit(" (", 1)[0] for label, _ in series})
    colors = {method: f"C{i % 10}" for i, method in enumerate(methods)}  # one color per method, new ones hatched
    for i, (label, rows) in enumerate(series):
        color = colors[label.rsplit(" (", 1)[0]]
        std = rows[f"{primary}:std"] if f"{primary}:std" in rows.columns else None
        ax.bar(x - 0.4 + (i + 0.5) * width, rows[f"{primary}:mean"], width, yerr=std, capsize=2, label=label,
               color=color, hatch="//" if label.endswith("(new)") else None, edgecolor="black", linewidth=0.5)
    ax.set_xticks(x, groups)
    ax.set_ylabel(f"{primary} (mean ± std over seeds)")
    ax.set_title(f"{primary}: new vs reference")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=120)


# ---- result ---------------------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    """Deltas (every metric, new vs reference methods) and ranks (primary metric) of one comparison."""

    new: str
    against: str
    primary: str
    deltas: pd.DataFrame
    ranks: pd.DataFrame
    new_table: pd.DataFrame
    ref_table: pd.DataFrame

    def _rank_section(self) -> list[str]:
        rows = [[r.dataset, r.test_set, r.method, _mean_std(r.mean, r.std), r.rank, _text(r.best_ref_method),
                 _number(r.best_ref_mean), _number(r.same_method_delta, signed=True)]
                for r in self.ranks.itertuples(index=False)]
        header = ["dataset", "test set", "new method", self.primary, "rank", "best reference", "its value",
                  "delta vs own reference"]
        return [f"## Rank among the reference methods ({self.primary})", "", markdown_table(header, rows)]

    def _delta_section(self, metrics: Sequence[str], same_only: bool, title: str) -> list[str]:
        chosen = self.deltas[self.deltas["metric"].isin(metrics)]
        if same_only:
            chosen = chosen[chosen["same_method"]]
        chosen = chosen[chosen["new_mean"].notna() | chosen["ref_mean"].notna()]  # the CSV keeps all-NaN rows
        if chosen.empty:
            return []
        rows = [[r.dataset, r.test_set, r.metric, r.new_method, r.ref_method, _mean_std(r.new_mean, r.new_std),
                 _mean_std(r.ref_mean, r.ref_std), _number(r.delta, signed=True), r.verdict]
                for r in chosen.itertuples(index=False)]
        header = ["dataset", "test set", "metric", "new method", "reference method", "new", "reference", "delta",
                  "verdict"]
        return ["", f"## {title}", "", markdown_table(header, rows)]

    def summary(self) -> str:
        """How many deltas with intervals on both sides are within noise, better or worse."""
        verdicts = self.deltas["verdict"].fillna("")
        counted = verdicts[verdicts != ""].value_counts()
        total = int(counted.sum())
        if not total:
            return "No delta has bootstrap intervals on both sides (older leaderboards): no verdicts."
        return (f"{int(counted.get(WITHIN_NOISE, 0))} of {total} differences with bootstrap intervals on both sides "
                f"are within noise (the 95 % intervals overlap); {int(counted.get(BETTER, 0))} better, "
                f"{int(counted.get(WORSE, 0))} worse.")

    def to_markdown(self) -> str:
        """Ranks, primary-metric deltas against every reference method, and headline metrics of reruns."""
        headline = [self.primary, *(m for m in HEADLINE if m != self.primary)]
        lines = [f"# {self.new} vs {self.against}", "",
                 "Mean ± std over seeds; delta = new - reference (higher is better for AUROC, AUPRC, Dice, precision "
                 "and recall; lower for FPR). "
                 "A rank places a new method among the other reference methods; `[oracle_test]` marks best Dice "
                 "at a threshold chosen on the test labels (an upper bound). Verdict (AUROC, AUPRC, calibrated "
                 "Dice): `within noise` when the two subject-bootstrap 95 % intervals overlap, else `better` / "
                 "`worse`.", "", self.summary(), "",
                 *self._rank_section(),
                 *self._delta_section([self.primary], False, f"{self.primary}: new vs every reference method"),
                 *self._delta_section(headline, True, "Same method in both (rerun check): headline metrics")]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> list[Path]:
        """``compare.csv`` (all deltas), ``compare.md`` and ``compare.png`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "compare.csv", out / "compare.md", out / "compare.png"]
        atomic_write_text(paths[0], self.deltas.to_csv(index=False, lineterminator="\n"))
        atomic_write_text(paths[1], self.to_markdown())
        plot_primary(self.new_table, self.ref_table, self.primary, paths[2])
        return paths


def compare(new: str | Path, against: str | Path, out_dir: str | Path | None = None,
            primary: str = "pixel/auprc") -> CompareResult:
    """Compare ``new`` (leaderboard CSV or sweep folder) with the leaderboard CSV ``against``.

    ValueError (naming the file) for a missing or malformed leaderboard, no shared dataset / test set, or a
    primary metric that is not in both."""
    new_table, ref_table = load_leaderboard(new, primary), load_leaderboard(against, primary)
    shared = new_table[KEYS].merge(ref_table[KEYS]).drop_duplicates()
    if shared.empty:
        def covered(frame: pd.DataFrame) -> str:
            return ", ".join(sorted(set(frame["dataset"] + "/" + frame["test_set"]))) or "none"

        raise ValueError(f"{new} and {against} share no dataset / test set: {new} has {covered(new_table)}; "
                         f"{against} has {covered(ref_table)}")
    ref_metrics = set(_metrics(ref_table))
    metrics = [metric for metric in _metrics(new_table) if metric in ref_metrics]
    name = primary.removesuffix(":mean")
    if name not in metrics:
        raise ValueError(f"primary metric {primary!r} is not in both {new} and {against}; "
                         f"shared metrics: {', '.join(metrics) or 'none'}")
    new_table = new_table.merge(shared)
    ref_table = ref_table.merge(shared)
    result = CompareResult(str(new), str(against), name, delta_table(new_table, ref_table, metrics),
                           rank_table(new_table, ref_table, name), new_table, ref_table)
    if out_dir is not None:
        result.save(out_dir)
    return result
