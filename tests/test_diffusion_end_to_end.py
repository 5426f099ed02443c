"""AnoDDPM and AutoDDPM end to end on the tiny synthetic brain: a bf16 sweep where AutoDDPM evaluates the AnoDDPM
job's checkpoint without retraining it, and both on two DDP processes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from benchmark.cli import main

TINY_DDPM = ["methods.anoddpm.channels=[8,8,16]", "methods.anoddpm.num_head_channels=16",
             "methods.anoddpm.max_training_steps=3", "methods.anoddpm.inference_steps=10",
             "methods.autoddpm.t_recon=200", "methods.autoddpm.resamples=2", "evaluation.generative_samples=4"]


@pytest.fixture(scope="module")
def setup(tiny_sweep_setup) -> dict[str, Path]:
    return tiny_sweep_setup


def _run_dir(results: Path, sweep: str, method: str) -> Path:
    return results / sweep / "runs" / "tiny_brain" / method / "seed_0"


def _metrics(results: Path, sweep: str, method: str) -> dict:
    return json.loads((_run_dir(results, sweep, method) / "metrics.json").read_text())


def _sweep(setup, name: str, *overrides: str) -> Path:
    path = setup["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"methods": ["anoddpm", "autoddpm"], "datasets": [str(setup["dataset"])],
                                    "seeds": [0], "trainer": str(setup["trainer"]),
                                    "overrides": [*TINY_DDPM, *overrides]}))
    return path


def test_anoddpm_and_autoddpm_through_a_bf16_sweep(setup):
    results = setup["root"] / "diffusion_results"
    sweep = _sweep(setup, "diffusion", "trainer.precision=bf16-mixed")
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 0
    ano, auto = _metrics(results, "diffusion", "anoddpm"), _metrics(results, "diffusion", "autoddpm")
    for metrics in (ano, auto):
        assert metrics["status"] == "completed" and metrics["run"]["precision"] == "bf16-mixed"
        assert 0.0 <= metrics["test_sets"]["tumor"]["pixel"]["auroc"] <= 1.0
        assert metrics["run"]["inference_images_per_s"] > 0
    assert ano["run"]["global_steps"] == 3  # max_training_steps, not the profile's epochs
    assert 0.0 < ano["generative"]["ssim_max"] <= 1.0 and "generative" not in auto
    assert auto["run"]["train_time_s"] == 0 and auto["run"]["weights_from"]["method"] == "anoddpm"
    checkpoint = _run_dir(results, "diffusion", "anoddpm") / "checkpoints" / auto["run"]["weights_from"]["checkpoint"]
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert auto["run"]["n_parameters"] == sum(v.numel() for k, v in state.items() if k.startswith("unet."))
    board = pd.read_csv(results / "diffusion" / "leaderboard.csv")
    assert {"anoddpm", "autoddpm"} <= set(board["method"])
    report = (results / "diffusion" / "report.md").read_text()
    cost = report.split("### Cost")[1].split("###")[0]
    ms_per_image = 1000.0 / auto["run"]["inference_images_per_s"]
    assert "inference ms/image" in cost and f"{ms_per_image:,.1f}" in cost.split("| autoddpm")[1].split("\n")[0]
    stamp = checkpoint.stat().st_mtime_ns
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 0  # all skipped
    assert checkpoint.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_anoddpm_and_autoddpm_on_two_ddp_processes(setup):
    results = setup["root"] / "diffusion_ddp"
    sweep = _sweep(setup, "diffusion_ddp", "trainer.strategy=ddp", "trainer.devices=2")
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 0
    counts = []
    for method in ("anoddpm", "autoddpm"):
        metrics = _metrics(results, "diffusion_ddp", method)
        assert metrics["status"] == "completed" and metrics["run"]["devices"] == 2
        counts.append({name: result["sample"]["n_slices"] for name, result in metrics["test_sets"].items()})
    assert counts[0] == counts[1] and all(n > 0 for n in counts[0].values())
