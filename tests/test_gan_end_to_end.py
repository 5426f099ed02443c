"""The GAN methods end to end on the tiny synthetic brain: sweep under bf16-mixed, kill and resume in stage 2,
divergence recorded as a failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from benchmark.cli import main
from lightning_modules.fanogan import FAnoGAN

REPO = Path(__file__).resolve().parent.parent
TINY_FANOGAN = ["methods.fanogan.dim=4", "methods.fanogan.z_dim=16", "methods.fanogan.gan_iterations=8",
                "methods.fanogan.encoder_iterations=4"]
TINY_DCGAN = ["methods.dcgan.features=4", "methods.dcgan.z_dim=16", "methods.dcgan.iterations=6",
              "methods.dcgan.mapping_steps=3"]


@pytest.fixture(scope="module")
def setup(tiny_sweep_setup) -> dict[str, Path]:
    return tiny_sweep_setup


def _metrics(results: Path, sweep: str, method: str) -> dict:
    return json.loads((results / sweep / "runs" / "tiny_brain" / method / "seed_0" / "metrics.json").read_text())


def test_fanogan_and_dcgan_through_a_bf16_sweep(setup):
    results = setup["root"] / "gan_results"
    sweep = setup["root"] / "gans.yaml"
    sweep.write_text(yaml.safe_dump({"methods": ["fanogan", "dcgan"], "datasets": [str(setup["dataset"])],
                                     "seeds": [0], "trainer": str(setup["trainer"]),
                                     "overrides": [*TINY_FANOGAN, *TINY_DCGAN, "trainer.precision=bf16-mixed"]}))
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 0
    for method, iterations in (("fanogan", 12), ("dcgan", 6)):
        metrics = _metrics(results, "gans", method)
        assert metrics["status"] == "completed" and metrics["run"]["precision"] == "bf16-mixed"
        assert 0.0 <= metrics["test_sets"]["tumor"]["pixel"]["auroc"] <= 1.0
        assert 0.0 < metrics["generative"]["ssim_min"] <= metrics["generative"]["ssim_max"] <= 1.0
        last = torch.load(results / "gans" / "runs" / "tiny_brain" / method / "seed_0" / "checkpoints" / "last.ckpt",
                          map_location="cpu", weights_only=False)
        assert int(last["state_dict"]["iteration"]) == iterations  # the schedule, not the profile's max_epochs
    board = pd.read_csv(results / "gans" / "leaderboard.csv")
    assert {"fanogan", "dcgan"} <= set(board["method"])
    assert board["generative/ssim_mean"].notna().all()
    report = (results / "gans" / "report.md").read_text()
    assert "Generative quality" in report


def _checkpoint_iteration(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["state_dict"]["iteration"])
    except Exception:  # not written yet, or being written
        return None


def test_fanogan_killed_in_stage_two_resumes_without_redoing_stage_one(setup, monkeypatch, capsys):
    results = setup["root"] / "resume_results"
    args = ["run", "--method", "fanogan", "--dataset", str(setup["dataset"]), "--trainer", str(setup["trainer"]),
            "--results-dir", str(results), "--quiet", "methods.fanogan.dim=4", "methods.fanogan.z_dim=16",
            "methods.fanogan.gan_iterations=6", "methods.fanogan.encoder_iterations=60"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(REPO / "run_benchmark.py"), *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = results / "adhoc" / "runs" / "tiny_brain" / "fanogan" / "seed_0"
    last, deadline = run_dir / "checkpoints" / "last.ckpt", time.time() + 300
    killed_at = None
    while time.time() < deadline and process.poll() is None:
        iteration = _checkpoint_iteration(last) if last.is_file() else None
        if iteration is not None and iteration > 6:  # a checkpoint inside the encoder stage
            os.killpg(process.pid, signal.SIGKILL)
            killed_at = iteration
            break
        time.sleep(0.05)
    process.wait()
    assert killed_at is not None and 6 < killed_at < 66, "the run must be killed inside stage 2"
    assert not (run_dir / "metrics.json").exists()
    generator_at_kill = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]

    def stage_one_again(self, real):
        raise AssertionError("stage 1 was redone after the resume")

    monkeypatch.setattr(FAnoGAN, "train_gan", stage_one_again)
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().out
    final = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    assert int(final["iteration"]) == 66
    for key, value in generator_at_kill.items():  # G and D frozen since stage 1 ended
        if key.startswith(("generator.", "critic.")):
            assert torch.equal(value, final[key]), key
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_diverging_gan_is_stopped_and_recorded_as_failed(setup):
    results = setup["root"] / "nan_results"
    code = main(["run", "--method", "fanogan", "--dataset", str(setup["dataset"]), "--trainer", str(setup["trainer"]),
                 "--results-dir", str(results), "--quiet", *TINY_FANOGAN, "methods.fanogan.gp_weight=.nan"])
    assert code == 1
    metrics = _metrics(results, "adhoc", "fanogan")
    assert metrics["status"] == "failed"
    assert metrics["error"]["type"] == "NonFiniteLossError"
    assert "non-finite training" in metrics["error"]["message"] and "discriminator_loss" in metrics["error"]["message"]
    assert not (results / "adhoc" / "runs" / "tiny_brain" / "fanogan" / "seed_0" / "checkpoints" / "last.ckpt").exists()
