"""Normative metrics and lesion-level detection through a sweep on the tiny synthetic brain, with constructed
restorations whose indices are known, and detection checked against a direct computation on the test arrays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from benchmark.cli import main
from benchmark.metrics.lesions import detect_lesions
from lightning_modules.base import AnomalyModule, AnomalyOutput


class IdentityRestorer(AnomalyModule):
    """Restores nothing: the reconstruction is the input (perfect RQI, no correction); map = intensity."""

    requires_training = False

    def predict_anomaly(self, image: torch.Tensor) -> AnomalyOutput:
        return AnomalyOutput(image.mean(1, keepdim=True), image.flatten(1).mean(1), image.clone())


class LesionEraser(AnomalyModule):
    """Changes exactly the lesion pixels (to 0) and nothing else: perfect conservation, maximal CACI."""

    requires_training = False

    def _predict(self, batch: dict[str, Any]) -> AnomalyOutput:
        image, mask = batch["image"], batch["mask"]
        restored = image * (1 - mask)
        return AnomalyOutput(mask.clone(), mask.flatten(1).mean(1), restored)

    def predict_anomaly(self, image: torch.Tensor) -> AnomalyOutput:  # the harness calls _predict
        raise NotImplementedError


@pytest.fixture(scope="module")
def results(tiny_sweep_setup) -> Path:
    root = tiny_sweep_setup["root"]
    for name in ("IdentityRestorer", "LesionEraser"):
        (root / f"{name}.yaml").write_text(f"class_path: tests.test_normative_end_to_end.{name}\n")
    sweep = root / "normative.yaml"
    sweep.write_text(yaml.safe_dump({
        "methods": [str(root / "IdentityRestorer.yaml"), str(root / "LesionEraser.yaml"), "intensity"],
        "datasets": [str(tiny_sweep_setup["dataset"])], "seeds": [0], "trainer": str(tiny_sweep_setup["trainer"])}))
    out = root / "normative_results"
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(out), "--quiet"]) == 0
    return out / "normative"


def _metrics(sweep_dir: Path, method: str) -> dict:
    return json.loads((sweep_dir / "runs" / "tiny_brain" / method / "seed_0" / "metrics.json").read_text())


def test_identity_restoration_has_perfect_rqi_and_no_correction(results):
    metrics = _metrics(results, "IdentityRestorer")
    healthy, tumor = metrics["test_sets"]["healthy"]["normative"], metrics["test_sets"]["tumor"]["normative"]
    assert healthy["rqi"] == pytest.approx(1.0) and healthy["mae"] == 0 and healthy["ssim"] == pytest.approx(1.0)
    assert tumor["caci"] == 0 and tumor["mse_lesion"] == 0 and tumor["mse_healthy"] == 0
    assert tumor["fd_restored"] == pytest.approx(tumor["fd_pathological"]) and tumor["ahi"] == 0
    assert tumor["composite"] == 0  # harmonic(1, 0) = 0, AHI 0
    summary = metrics["normative"]
    assert summary["rqi_reading"] == "mae" and summary["feature_extractor"].startswith("healthy-encoder")
    assert "NORMBENCH_LPIPS_DIR" in summary["lpips"]["alex"]  # LPIPS components skipped, with the reason
    assert "normative.lpips" in " ".join(metrics["test_sets"]["healthy"]["notes"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(results / "runs" / "tiny_brain" / "IdentityRestorer" / "seed_0" / "tensorboard"))
    tags = set(events.Reload().Tags()["scalars"])
    assert {"normative/rqi", "test/tumor/normative/caci", "test/tumor/detection/healthy_fpr@5%/f1"} <= tags


def test_lesion_eraser_conserves_healthy_tissue_and_corrects_lesions(results):
    tumor = _metrics(results, "LesionEraser")["test_sets"]["tumor"]["normative"]
    assert tumor["mse_healthy"] == 0 and tumor["mse_lesion"] > 0 and tumor["caci"] == 1.0
    assert tumor["ssim_lesion"] < tumor["ssim_healthy"] <= 1.0


def test_methods_without_reconstruction_get_null_with_a_reason(results):
    metrics = _metrics(results, "intensity")
    for name in ("healthy", "tumor"):
        assert metrics["test_sets"][name]["normative"]["rqi"] is None
        assert "no reconstruction" in metrics["test_sets"][name]["notes"]["normative"]
    board = pd.read_csv(results / "leaderboard.csv")
    row = board[(board["method"] == "intensity") & (board["test_set"] == "tumor")].iloc[0]
    assert np.isnan(row["normative/composite:mean"])
    eraser = board[(board["method"] == "LesionEraser") & (board["test_set"] == "tumor")].iloc[0]
    assert eraser["normative/caci:mean"] == 1.0
    assert eraser["normative/feature_extractor"].startswith("healthy-encoder")
    assert eraser["normative/rqi_reading"] == "mae"
    report = (results / "report.md").read_text()
    assert "### Normative learning" in report and (results / "figures" / "normative_tiny_brain.png").is_file()


def test_lesion_detection_equals_a_direct_computation(results, tiny_sweep_setup):
    """The identity restorer's map is the image: recompute the detection on the test arrays directly."""
    from benchmark.config import ComponentConfig

    metrics = _metrics(results, "IdentityRestorer")
    threshold = metrics["calibration"]["thresholds"]["healthy_fpr@5%"]["threshold"]
    config = yaml.safe_load(Path(tiny_sweep_setup["dataset"]).read_text())
    datamodule = ComponentConfig("tiny_brain", config["class_path"], config["init_args"]).instantiate(progress=False)
    datamodule.prepare_data()
    datamodule.setup("test")
    arrays = datamodule._splits.tests["tumor"]
    found = detect_lesions(torch.from_numpy(np.array(arrays.images)).mean(1, keepdim=True),
                           torch.from_numpy(np.asarray(arrays.masks, dtype=np.float32)),
                           torch.from_numpy(np.asarray(arrays.rois, dtype=np.float32)), threshold)
    detection = metrics["test_sets"]["tumor"]["detection"]["healthy_fpr@5%"]
    assert detection["n_lesions"] == len(found["tp"]) > 0
    assert detection["detection_rate"] == pytest.approx(found["tp"].mean())
    assert detection["f1"] == pytest.approx(found["f1"].mean())
    assert detection["fp_mass"] == pytest.approx(found["fp_mass"].mean(), rel=1e-5)
