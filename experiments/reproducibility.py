"""How far apart are two runs of the same sweep? Compares the per-run metrics of two sweep folders job by job.

    python experiments/reproducibility.py results/default /other/machine/results/default [--out table.md]

For every job present (completed) in both folders, every numeric metric of every test set and score variant in
``metrics.json`` is compared: how many values are bit-identical, and the largest absolute difference of the headline
metrics per method (pixel AUROC / AUPRC, sample AUROC). Run-time fields (timings, throughput) are ignored. The
recorded torch threads, torch version and CPU model of each side are printed, since they are what changes the float
arithmetic between two machines.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

HEADLINE = ("pixel/auroc", "pixel/auprc", "sample/auroc")
SKIPPED = ("notes", "score_distribution", "run", "versions", "threshold")


def flatten(node: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested result as ``path -> value`` (NaN for null)."""
    out: dict[str, float] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in SKIPPED:
                out.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    elif node is None or (isinstance(node, int | float) and not isinstance(node, bool)):  # flags are not metrics
        out[prefix] = math.nan if node is None else float(node)
    return out


def run_metrics(path: Path) -> dict[str, dict[str, float]] | None:
    """``entry -> {test_set/metric: value}`` of one completed run (entries: the method or its score variants)."""
    data = json.loads(path.read_text())
    if data.get("status") != "completed":
        return None
    variants = data.get("variants") or {None: {"test_sets": data["test_sets"]}}
    name = data["method"]
    return {name if variant is None else f"{name}[{variant}]": flatten(entry["test_sets"])
            for variant, entry in variants.items()}


def runs(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(Path(folder).glob("runs/*/*/seed_*/metrics.json"))}


def compare(left: Path, right: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Totals of identical values and one row per entry x dataset with the largest headline differences."""
    a, b = runs(left), runs(right)
    totals = {"jobs": 0, "values": 0, "identical": 0}
    rows = []
    for key in sorted(set(a) & set(b)):
        first, second = run_metrics(a[key]), run_metrics(b[key])
        if first is None or second is None:
            continue
        totals["jobs"] += 1
        dataset = key.split("/")[1]
        for entry in sorted(set(first) & set(second)):
            x, y = first[entry], second[entry]
            shared = sorted(set(x) & set(y))
            same = sum(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in shared)
            totals["values"] += len(shared)
            totals["identical"] += same
            row: dict[str, Any] = {"entry": entry, "dataset": dataset, "values": len(shared), "identical": same}
            for metric in HEADLINE:
                diffs = [abs(x[k] - y[k]) for k in shared if k.endswith("/" + metric) and k.count("/") == 2
                         and math.isfinite(x[k]) and math.isfinite(y[k])]
                row[metric] = max(diffs) if diffs else math.nan
            rows.append(row)
    return totals, rows


def environment(folder: Path) -> str:
    """Threads and versions recorded by the runs of a sweep folder."""
    seen = set()
    for path in runs(folder).values():
        data = json.loads(path.read_text())
        run, versions = data.get("run", {}), data.get("versions", {})
        seen.add(f"torch {versions.get('torch')}, threads {run.get('torch_threads')}, device {run.get('device')}")
    return "; ".join(sorted(seen))


def table(totals: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"{totals['jobs']} jobs, {totals['identical']} of {totals['values']} metric values bit-identical", "",
             "| entry | dataset | identical | max abs diff pixel AUROC | pixel AUPRC | sample AUROC |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        cells = [f"{row[m]:.4f}" if math.isfinite(row[m]) else "-" for m in HEADLINE]
        lines.append(f"| {row['entry']} | {row['dataset']} | {row['identical']}/{row['values']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("left", type=Path)
    parser.add_argument("right", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    totals, rows = compare(args.left, args.right)
    text = "\n".join([f"left:  {args.left} ({environment(args.left)})",
                      f"right: {args.right} ({environment(args.right)})",
                      f"this machine: {platform.processor() or platform.machine()}", "", table(totals, rows)])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if totals["jobs"] else 1


if __name__ == "__main__":
    sys.exit(main())
