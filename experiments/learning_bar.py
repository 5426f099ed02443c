"""Does every learned method clear the bar? One row per method from a sweep's leaderboard.

    python experiments/learning_bar.py results/reference/converged/leaderboard.csv [--dataset synthetic_brain]

For each method (baselines excluded) its best score variant on the bar's test set (``tumor``) by pixel AUROC is
taken; the row gives that entry's pixel AUROC with its 95 % interval, pixel AUPRC, ``beats_random`` (tested on the
sweep's rank metric) and its pixel AUROC on ``stroke``. The bar of ``docs/validation.md`` (issue: "Evidence that
every method learns"): ``beats_random`` true and tumour AUROC >= 0.65 (``learns``), and tumour or stroke AUROC
>= 0.75 (``strong``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

BASELINES = ("random", "intensity")
LEARNS_AUROC, STRONG_AUROC = 0.65, 0.75
AUROC, AUPRC = "pixel/auroc:mean", "pixel/auprc:mean"


def bar_rows(board: pd.DataFrame, dataset: str, test_set: str = "tumor", other: str = "stroke") -> pd.DataFrame:
    """One row per learned method: its best variant on ``test_set`` by pixel AUROC and the bar's verdicts."""
    rows = board.loc[(board["dataset"] == dataset) & (board["status"] != "failed")].copy()
    rows = rows.assign(base=rows["method"].str.split("[", regex=False).str[0])
    on_set = rows[(rows["test_set"] == test_set) & ~rows["base"].isin(BASELINES) & rows[AUROC].notna()]
    if on_set.empty:
        raise ValueError(f"no learned method with a pixel AUROC on {dataset} / {test_set}")
    best = on_set.sort_values(AUROC, ascending=False).drop_duplicates("base")
    other_auroc = rows[rows["test_set"] == other].set_index("method")[AUROC]
    out = pd.DataFrame({
        "method": best["base"].to_numpy(), "entry": best["method"].to_numpy(),
        "seeds": best["n_seeds"].to_numpy(),
        f"{test_set} AUROC": best[AUROC].to_numpy(),
        "ci_low": best["pixel/auroc:ci_low"].to_numpy(), "ci_high": best["pixel/auroc:ci_high"].to_numpy(),
        f"{test_set} AUPRC": best[AUPRC].to_numpy(),
        "beats_random": best["beats_random"].astype(str).str.lower().to_numpy(),
        f"{other} AUROC": other_auroc.reindex(best["method"]).to_numpy(),
    })
    out["learns"] = (out["beats_random"] == "true") & (out[f"{test_set} AUROC"] >= LEARNS_AUROC)
    out["strong"] = out[[f"{test_set} AUROC", f"{other} AUROC"]].max(axis=1) >= STRONG_AUROC
    return out.reset_index(drop=True)


def markdown(rows: pd.DataFrame, test_set: str = "tumor", other: str = "stroke") -> str:
    """The rows of :func:`bar_rows` as a markdown table (AUROC with its interval; yes / no verdicts)."""
    lines = [f"| method | entry | seeds | {test_set} AUROC [95 % CI] | {test_set} AUPRC | beats random | "
             f"{other} AUROC | AUROC >= {LEARNS_AUROC} and beats random | {test_set} or {other} >= {STRONG_AUROC} |",
             "| --- | --- | ---: | --- | ---: | --- | ---: | --- | --- |"]
    for _, row in rows.iterrows():
        lines.append(f"| {row['method']} | `{row['entry']}` | {row['seeds']} | {row[f'{test_set} AUROC']:.3f} "
                     f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {row[f'{test_set} AUPRC']:.4f} | "
                     f"{row['beats_random']} | {row[f'{other} AUROC']:.3f} | {'yes' if row['learns'] else 'no'} | "
                     f"{'yes' if row['strong'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("leaderboard", type=Path)
    parser.add_argument("--dataset", default="synthetic_brain")
    args = parser.parse_args(argv)
    if not args.leaderboard.is_file():
        print(f"{args.leaderboard}: no such leaderboard (a sweep's leaderboard.csv)", file=sys.stderr)
        return 2
    try:
        rows = bar_rows(pd.read_csv(args.leaderboard), args.dataset)
    except (ValueError, KeyError) as error:
        print(f"{args.leaderboard}: {error}", file=sys.stderr)
        return 2
    print(markdown(rows))
    print(f"\n{int(rows['learns'].sum())} of {len(rows)} learned methods beat random with tumour AUROC >= "
          f"{LEARNS_AUROC}; {int(rows['strong'].sum())} reach {STRONG_AUROC} on tumour or stroke.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
