"""A prepared release runs end to end: prepare BraTS, train and evaluate through the `run` command."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from benchmark.cli import main
from benchmark.config import CONFIG_DIR
from tests.test_release_brats import brats2021


def test_prepared_brats_trains_and_evaluates(tmp_path):
    root = brats2021(tmp_path / "MICCAI_BraTS2020_TrainingData", n=8)
    out = tmp_path / "prepared"
    assert main(["prepare", "brats", "--root", str(root), "--out", str(out)]) == 0
    config = yaml.safe_load((CONFIG_DIR / "datasets" / "brats.yaml").read_text())
    args = config["init_args"]
    for key in ("train_csv", "val_csv", "unlabelled_csv"):
        args[key] = str(out / args[key].removeprefix("data/brats/"))
    args["test_csvs"] = {"tumor": str(out / "test_tumor.csv")}
    args.update(cache_dir=str(tmp_path / "cache"), image_size=16, batch_size=8, min_lesion_pixels=2,
                slice_range=[0.0, 1.0], min_roi_fraction=0.05)
    dataset = tmp_path / "brats.yaml"
    dataset.write_text(yaml.safe_dump(config))
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1,
                                                   "num_sanity_val_steps": 0, "log_every_n_steps": 1}}))
    results = tmp_path / "results"
    for method in ("intensity", "ae"):
        assert main(["run", "--method", method, "--dataset", str(dataset), "--trainer", str(trainer),
                     "--results-dir", str(results), "--quiet"]) == 0
    metrics = json.loads((results / "adhoc" / "runs" / "brats" / "ae" / "seed_0" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and set(metrics["test_sets"]) == {"tumor"}
    pixel = metrics["test_sets"]["tumor"]["pixel"]
    assert pixel["n_lesion_pixels"] > 0 and 0.0 <= pixel["auroc"] <= 1.0
    intensity = json.loads((results / "adhoc" / "runs" / "brats" / "intensity" / "seed_0" / "metrics.json"
                            ).read_text())["test_sets"]["tumor"]["pixel"]
    assert intensity["auroc"] > 0.9  # the tumour is the brightest tissue of these volumes: intensity finds it
    board = pd.read_csv(results / "adhoc" / "leaderboard.csv")
    assert set(board["method"]) == {"intensity", "ae"} and set(board["test_set"]) == {"tumor"}
