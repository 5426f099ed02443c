"""The sweep folder as the report reads it: ``leaderboard.csv`` and the run folders
``runs/<dataset>/<method>/seed_<n>/`` (their ``metrics.json``), one :class:`Run` per score variant, and which test
sets have lesions. Shared by the report (``report.py``) and its sections; no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.io import read_json
from benchmark.leaderboard import read_leaderboard, split_variants
from benchmark.naming import variant_method
from benchmark.report_common import is_finite, unique

FAILED_TEST_SET = "-"  # test_set of the leaderboard row of a method x dataset without any completed run
SEED_DIR = re.compile(r"seed_(-?\d+)")


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
        return unique([*self.board["dataset"], *sorted(run.dataset for run in self.runs)])

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
        return unique(names)

    def completed(self, dataset: str) -> list[Run]:
        return [run for run in self.runs if run.dataset == dataset and run.status == "completed"]


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


def has_lesions(result: dict[str, Any]) -> bool:
    """Whether one test set's metrics (:meth:`Run.result`) count lesion pixels or anomalous slices."""
    pixel, sample = result.get("pixel") or {}, result.get("sample") or {}
    counts = (pixel.get("n_lesion_pixels"), sample.get("n_anomalous_slices"), result.get("n_lesion_pixels"))
    return any(is_finite(count) and count > 0 for count in counts)


def anomalous_test_sets(sweep: Sweep, dataset: str) -> list[str]:
    """Test sets with lesions: by any completed run's metrics.json, or a finite pixel AUROC in the leaderboard."""
    rows, runs = sweep.rows(dataset), sweep.completed(dataset)
    scored = set(rows.loc[rows["pixel/auroc:mean"].notna(), "test_set"]) if "pixel/auroc:mean" in rows else set()
    return [name for name in sweep.test_sets(dataset)
            if name in scored or any(has_lesions(run.result(name)) for run in runs)]
