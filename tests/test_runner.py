"""The sweep runner: failure isolation, kill-and-resume, concurrent writers, DDP, bf16, submitit, reproducibility."""

from __future__ import annotations

import json
import math
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
from benchmark.config import ConfigError
from benchmark.sweep import load_sweep
from lightning_modules.ae import AutoEncoder
from lightning_modules.base import AnomalyModule, AnomalyOutput
from tests.conftest import TINY_TRAINER

REPO = Path(__file__).resolve().parent.parent
RESULT_COLUMNS = ("pixel/auroc:mean", "pixel/auprc:mean", "calibrated/healthy_fpr@5%/dice:mean", "sample/auroc:mean")


class ExplodingMethod(AnomalyModule):
    """Fails at test time, like a method with a bug."""

    requires_training = False

    def predict_anomaly(self, image: torch.Tensor) -> AnomalyOutput:
        raise RuntimeError("boom: a bug in the method")


class NanLossMethod(AutoEncoder):
    """An autoencoder whose loss turns into NaN (a diverging run)."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * float("nan")


@pytest.fixture(scope="module")
def setup(tiny_sweep_setup) -> dict[str, Path]:
    root = tiny_sweep_setup["root"]
    for name in ("ExplodingMethod", "NanLossMethod"):
        (root / f"{name}.yaml").write_text(f"class_path: tests.test_runner.{name}\n")
    return tiny_sweep_setup


def _sweep(setup, name: str, methods: list[str], **extra) -> Path:
    path = setup["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"methods": methods, "datasets": [str(setup["dataset"])], "seeds": [0],
                                    "trainer": str(setup["trainer"]), **extra}))
    return path


def _metrics(results: Path, sweep: str, method: str, seed: int = 0) -> dict:
    return json.loads((results / sweep / "runs" / "tiny_brain" / method / f"seed_{seed}" / "metrics.json").read_text())


def _cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "run_benchmark.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_overrides_are_validated_before_anything_runs(setup):
    sweep = _sweep(setup, "overrides", ["random", "ae"])
    loaded = load_sweep(str(sweep), ["trainer.max_epochs=1", "methods.ae.lr=0.01", "seeds=[1,2]"])
    assert [job.seed for job in loaded.jobs] == [1, 2, 1, 2]
    assert loaded.jobs[2].method.init_args["lr"] == 0.01 and loaded.jobs[0].profile.trainer["max_epochs"] == 1
    for override, message in [("trainer.max_epoch=1", r"unknown key trainer\.max_epoch"),
                              ("methods.ae.learning_rate=1", r"unknown key init_args\.learning_rate"),
                              ("methods.vae.lr=1", r"'vae' is not one of this sweep's methods"),
                              ("evaluation.fpr=[0.1]", r"unknown key\(s\) \['fpr'\]"),
                              ("colour=red", r"unknown sweep key 'colour'"), ("trainer.max_epochs", "key=value")]:
        with pytest.raises(ConfigError, match=message):
            load_sweep(str(sweep), [override])


def test_failures_are_recorded_and_the_sweep_goes_on(setup, capsys):
    results = setup["root"] / "results"
    sweep = _sweep(setup, "failing", [str(setup["root"] / "ExplodingMethod.yaml"), "random",
                                      str(setup["root"] / "NanLossMethod.yaml")])
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 1
    assert "FAILED" in capsys.readouterr().err
    exploding, nan = _metrics(results, "failing", "ExplodingMethod"), _metrics(results, "failing", "NanLossMethod")
    assert exploding["status"] == "failed" and "boom" in exploding["error"]["message"]
    assert nan["status"] == "failed" and nan["error"]["type"] == "NonFiniteLossError"
    assert _metrics(results, "failing", "random")["status"] == "completed"
    board = pd.read_csv(results / "failing" / "leaderboard.csv")
    statuses = dict(zip(board["method"], board["status"], strict=False))
    assert statuses["ExplodingMethod"] == "failed" and statuses["NanLossMethod"] == "failed"
    assert statuses["random"] == "completed"
    assert (results / "failing" / "report.md").is_file()

    # the README's commands on this folder: rebuild leaderboard and report; the bare command reruns nothing finished
    (results / "failing" / "leaderboard.csv").unlink()
    assert main(["leaderboard", str(results / "failing")]) == 0
    assert pd.read_csv(results / "failing" / "leaderboard.csv").equals(board)
    assert main(["report", str(results / "failing")]) == 0
    assert main(["--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 1  # failed jobs retried
    out = capsys.readouterr().out
    assert "skipping" in out and "retrying a failed job from scratch" in out


def test_killed_sweep_resumes_and_matches_an_uninterrupted_one(setup):
    sweep = _sweep(setup, "killable", ["random", "ae"])
    reference, interrupted = setup["root"] / "reference", setup["root"] / "interrupted"
    assert _cli("sweep", "--config", str(sweep), "--results-dir", str(reference), "--quiet").returncode == 0

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(REPO / "run_benchmark.py"), "sweep", "--config", str(sweep),
                                "--results-dir", str(interrupted), "--quiet"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ae_dir = interrupted / "killable" / "runs" / "tiny_brain" / "ae" / "seed_0"
    deadline = time.time() + 300
    while not (ae_dir / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # mid-job: after the first epoch's checkpoint
    process.wait()
    assert not (ae_dir / "metrics.json").exists()
    random_before = (ae_dir.parent.parent / "random" / "seed_0" / "metrics.json").stat().st_mtime_ns

    rerun = _cli("sweep", "--config", str(sweep), "--results-dir", str(interrupted))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "is finished with this configuration" in rerun.stdout and "resuming" in rerun.stdout
    assert (ae_dir.parent.parent / "random" / "seed_0" / "metrics.json").stat().st_mtime_ns == random_before
    assert _metrics(interrupted, "killable", "ae")["run"]["epochs"] == TINY_TRAINER["max_epochs"]

    expected = pd.read_csv(reference / "killable" / "leaderboard.csv")
    resumed = pd.read_csv(interrupted / "killable" / "leaderboard.csv")
    pd.testing.assert_frame_equal(resumed[["method", "test_set", *RESULT_COLUMNS]],
                                  expected[["method", "test_set", *RESULT_COLUMNS]], check_exact=True)
    assert not expected["pixel/auroc:mean"].dropna().empty


def test_two_runner_processes_share_one_results_folder(setup):
    results = setup["root"] / "shared"
    first, second = _sweep(setup, "shared", ["random"]), setup["root"] / "shared_b" / "shared.yaml"
    second.parent.mkdir()
    second.write_text(yaml.safe_dump({**yaml.safe_load(first.read_text()), "methods": ["intensity"]}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, str(REPO / "run_benchmark.py"), "sweep", "--config", str(path),
                                   "--results-dir", str(results), "--quiet"], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for path in (first, second)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    board = pd.read_csv(results / "shared" / "leaderboard.csv")
    assert set(board["method"]) == {"random", "intensity"} and set(board["status"]) == {"completed"}
    assert not list((results / "shared").glob(".leaderboard.csv.*"))  # no temporary files left behind


def test_same_seed_gives_identical_metrics_and_bf16_runs(setup):
    results = setup["root"] / "repeat"
    sweep = _sweep(setup, "repeat", ["ae"])
    for name in ("one", "two"):
        assert main(["run", "--method", "ae", "--dataset", str(setup["dataset"]), "--trainer", str(setup["trainer"]),
                     "--results-dir", str(results), "--sweep", name, "--quiet", "trainer.max_epochs=1"]) == 0
    one, two = _metrics(results, "one", "ae"), _metrics(results, "two", "ae")
    assert one["test_sets"] == two["test_sets"]
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--precision", "bf16-mixed",
                 "--quiet", "trainer.max_epochs=1"]) == 0
    bf16 = _metrics(results, "repeat", "ae")
    assert bf16["run"]["precision"] == "bf16-mixed" and 0 <= bf16["test_sets"]["tumor"]["pixel"]["auroc"] <= 1


@pytest.mark.slow
def test_ddp_job_on_two_cpu_processes(setup):
    results = setup["root"] / "ddp"
    done = _cli("run", "--method", "ae", "--dataset", str(setup["dataset"]), "--trainer", str(setup["trainer"]),
                "--results-dir", str(results), "--sweep", "ddp", "--devices", "2", "--quiet",
                "trainer.max_epochs=1")
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = _metrics(results, "ddp", "ae")
    assert metrics["status"] == "completed" and metrics["run"]["devices"] == 2
    assert math.isfinite(metrics["test_sets"]["tumor"]["pixel"]["auroc"])
    assert metrics["test_sets"]["tumor"]["sample"]["n_slices"] > 0


@pytest.mark.slow
def test_submitit_local_backend_runs_a_two_job_sweep(setup):
    results = setup["root"] / "submitit"
    sweep = _sweep(setup, "cluster", ["random", "intensity"], backend={"kind": "submitit", "cluster": "local",
                                                                       "timeout_min": 10, "cpus_per_task": 1})
    done = _cli("sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet")
    assert done.returncode == 0, done.stderr[-4000:]
    for method in ("random", "intensity"):
        assert _metrics(results, "cluster", method)["status"] == "completed"
    assert (results / "cluster" / "leaderboard.csv").is_file() and (results / "cluster" / "submitit").is_dir()


def test_smoke_sweep_end_to_end(tmp_path, monkeypatch):
    """configs/sweeps/smoke.yaml as shipped: every method, leaderboard, report and TensorBoard logs."""
    monkeypatch.setenv("NORMBENCH_DATA_DIR", str(tmp_path / "data"))
    assert main(["sweep", "--config", "smoke", "--results-dir", str(tmp_path / "results"), "--quiet"]) == 0
    folder = tmp_path / "results" / "smoke"
    board = pd.read_csv(folder / "leaderboard.csv")
    assert set(board["method"]) == {"random", "intensity", "ae"} and set(board["status"]) == {"completed"}
    assert set(board.loc[board["test_set"] == "tumor", "rank"]) == {1, 2, 3}
    report = (folder / "report.md").read_text()
    assert "## Dataset `synthetic_brain`" in report and "figures/" in report
    for method in ("random", "intensity", "ae"):
        assert list((folder / "runs" / "synthetic_brain" / method / "seed_0" / "tensorboard").glob("events.*"))


def test_rebuilt_job_links_the_image_size_from_the_dataset_again(setup):
    """A job rebuilt from job.json (DDP and submitit children) must not freeze the method's default image size:
    the tiny dataset is 32 px while the methods' defaults say 64."""
    from benchmark.job import job_from_spec, job_key, job_spec

    job = next(j for j in load_sweep(_sweep(setup, "spec", ["ae", "fanogan"])).jobs if j.method.name == "fanogan")
    rebuilt = job_from_spec(json.loads(json.dumps(job_spec(job))))
    assert "image_size" not in rebuilt.method.init_args and rebuilt.method.init_args == job.method.init_args
    assert job_key(rebuilt) == job_key(job)
    model = rebuilt.method.instantiate(image_size=32, in_channels=1)
    assert model.hparams.image_size == 32


def test_gans_get_ddp_with_unused_parameter_detection(setup, tmp_path):
    from benchmark.job import _build_trainer

    job = load_sweep(_sweep(setup, "ddp_gan", ["dcgan"])).jobs[0]
    job.profile.trainer.update(devices=2, strategy="ddp")
    trainer, _ = _build_trainer(job, job.method.instantiate(image_size=32, in_channels=1), tmp_path, False)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True
    assert trainer.max_epochs == -1  # the GAN's stage schedule decides when fit ends
