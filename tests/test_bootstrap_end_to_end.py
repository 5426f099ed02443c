"""End to end: a tiny sweep with ``random``, an oracle and a second noise method gets subject-bootstrap intervals
in ``metrics.json`` and the leaderboard, and the paired test against ``random`` tells the oracle from the noise."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from benchmark.cli import main
from benchmark.leaderboard import read_leaderboard
from benchmark.metrics.subject_counts import read_subject_counts
from lightning_modules.base import AnomalyModule, AnomalyOutput

DATA = {"n_train": 1, "n_val": 1, "n_test_healthy": 1, "n_test_per_lesion": 6, "n_unlabelled": 0,
        "lesion_kinds": ["tumor", "stroke"], "resolution_mm": 4.0, "image_size": 32, "batch_size": 16,
        "min_lesion_pixels": 3}
LESION_SETS = ("tumor", "stroke")


class OracleMethod(AnomalyModule):
    """The lesion mask itself plus a small constant: a perfect detector that needs no training."""

    requires_training = False

    def predict_anomaly(self, image: torch.Tensor) -> AnomalyOutput:  # pragma: no cover - _predict reads the mask
        raise NotImplementedError

    def _predict(self, batch: dict[str, Any]) -> AnomalyOutput:
        anomaly_map = (batch["mask"] > 0.5).float() + 0.01
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map), None)


class NoiseMethod(AnomalyModule):
    """Fresh uniform noise from torch's global generator (seeded by the job's seed): chance level again."""

    requires_training = False

    def predict_anomaly(self, image: torch.Tensor) -> AnomalyOutput:
        b, _, h, w = image.shape
        return AnomalyOutput(torch.rand(b, 1, h, w), torch.rand(b), None)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bootstrap_e2e")
    (root / "brain.yaml").write_text(yaml.safe_dump({
        "class_path": "datamodules.synthetic_brain.SyntheticBrainDataModule",
        "init_args": {"data_root": str(root / "data"), **DATA}}))
    (root / "cpu.yaml").write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "num_sanity_val_steps": 0},
        "early_stopping_patience": None, "image_grid_every_n_epochs": 1}))
    for name, cls in (("oracle", OracleMethod), ("noise", NoiseMethod)):
        (root / f"{name}.yaml").write_text(f"class_path: {__name__}.{cls.__name__}\n")
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "methods": ["random", str(root / "oracle.yaml"), str(root / "noise.yaml")],
        "datasets": [str(root / "brain.yaml")], "seeds": [0, 1], "trainer": str(root / "cpu.yaml")}))
    assert main(["sweep", "--config", str(root / "sweep.yaml"), "--results-dir", str(root / "results"),
                 "--quiet"]) == 0
    return root / "results" / "sweep"


def board_row(board: pd.DataFrame, method: str, test_set: str) -> pd.Series:
    rows = board[(board["method"] == method) & (board["test_set"] == test_set)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_run_folders_hold_subject_counts_and_single_run_intervals(sweep: Path) -> None:
    run = sweep / "runs" / "brain" / "oracle" / "seed_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["bootstrap"]["resamples"] == 1000 and metrics["evaluation"]["bootstrap"]["seed"] == 0
    assert metrics["evaluation"]["bootstrap"]["unit"] == "subject"
    counts = read_subject_counts(run, metrics["key"])
    assert counts is not None and set(counts) == {(None, name) for name in metrics["test_sets"]}
    for name in LESION_SETS:
        result = metrics["test_sets"][name]
        assert len(counts[None, name].subjects) == DATA["n_test_per_lesion"]
        assert int(counts[None, name].pixels.sum()) == result["pixel"]["n_roi_pixels"]
        assert result["pixel"]["ci95"] == {"auroc": [1.0, 1.0], "auprc": [1.0, 1.0]}  # perfect on every draw
        assert result["calibrated"]["healthy_fpr@5%"]["dice_ci95"] == [1.0, 1.0]
    healthy = metrics["test_sets"]["healthy"]
    assert healthy["pixel"]["ci95"] == {"auroc": [None, None], "auprc": [None, None]}  # no lesion pixels
    noise = json.loads((sweep / "runs" / "brain" / "noise" / "seed_0" / "metrics.json").read_text())
    low, high = noise["test_sets"]["tumor"]["pixel"]["ci95"]["auroc"]
    assert low < noise["test_sets"]["tumor"]["pixel"]["auroc"] < high and high - low < 0.1
    names = [path.name for path in run.iterdir()]
    assert "subject_counts.npz" in names and not any(name.startswith(".") for name in names)


def test_leaderboard_tests_against_random(sweep: Path) -> None:
    board = read_leaderboard(sweep / "leaderboard.csv")
    columns = list(board.columns)
    assert columns[8:10] == ["beats_random", "p_vs_random"]
    for metric in ("pixel/auroc", "pixel/auprc", "calibrated/healthy_fpr@1%/dice"):
        std = columns.index(f"{metric}:std")
        assert columns[std + 1:std + 3] == [f"{metric}:ci_low", f"{metric}:ci_high"]
    for name in LESION_SETS:
        oracle, noise, random = (board_row(board, m, name) for m in ("oracle", "noise", "random"))
        assert oracle["beats_random"] == "true" and oracle["p_vs_random"] == pytest.approx(1 / 1001)
        assert noise["beats_random"] == "false" and noise["p_vs_random"] >= 0.05
        assert random["beats_random"] == "n.a." and math.isnan(random["p_vs_random"])
        for metric in ("pixel/auroc", "pixel/auprc", "calibrated/healthy_fpr@5%/dice"):
            low, mean, high = (oracle[f"{metric}:{stat}"] for stat in ("ci_low", "mean", "ci_high"))
            assert low <= mean <= high, (name, metric)
        assert random["pixel/auroc:ci_low"] < random["pixel/auroc:mean"] < random["pixel/auroc:ci_high"]
    healthy = board[board["test_set"] == "healthy"]
    assert set(healthy["beats_random"]) == {"n.a."} and healthy["pixel/auroc:ci_low"].isna().all()
