"""End to end on a tiny synthetic brain: the `run` command, the run folder, TensorBoard, resume, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmark.cli import main
from benchmark.qualitative import load_qualitative
from lightning_modules.base import AnomalyModule, AnomalyOutput

TINY_DATA = {"n_train": 3, "n_val": 1, "n_test_healthy": 1, "n_test_per_lesion": 1, "n_unlabelled": 0,
             "resolution_mm": 4.0, "image_size": 32, "batch_size": 16, "min_lesion_pixels": 3}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    dataset = root / "tiny_brain.yaml"
    dataset.write_text(yaml.safe_dump({"class_path": "datamodules.synthetic_brain.SyntheticBrainDataModule",
                                       "init_args": {"data_root": str(root / "data"), **TINY_DATA}}))
    trainer = root / "tiny_cpu.yaml"
    trainer.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2,
                                                   "log_every_n_steps": 1, "num_sanity_val_steps": 0},
                                       "early_stopping_patience": 3, "image_grid_every_n_epochs": 1}))
    return {"root": root, "dataset": dataset, "trainer": trainer, "results": root / "results"}


def _run(configs, method: str, *extra: str) -> int:
    return main(["run", "--method", method, "--dataset", str(configs["dataset"]), "--trainer",
                 str(configs["trainer"]), "--results-dir", str(configs["results"]), "--quiet", *extra])


def _run_dir(configs, method: str) -> Path:
    return configs["results"] / "adhoc" / "runs" / "tiny_brain" / method / "seed_0"


def test_run_writes_a_complete_run_folder(configs):
    assert _run(configs, "ae") == 0
    run = _run_dir(configs, "ae")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["method"] == "ae" and metrics["seed"] == 0
    assert set(metrics["test_sets"]) == {"healthy", "tumor", "ms", "stroke"}
    for kind in ("tumor", "stroke"):  # at 4 mm and 32 px the tiny MS lesions may vanish in the resize
        result = metrics["test_sets"][kind]
        assert result["pixel"]["n_lesion_pixels"] > 0
        assert 0.0 <= result["pixel"]["auroc"] <= 1.0 and 0.0 <= result["pixel"]["auprc"] <= 1.0
        assert set(result["calibrated"]) == {"healthy_fpr@1%", "healthy_fpr@2%", "healthy_fpr@5%"}
        assert set(result["lesion_size"]["bins"]) == {"small", "medium", "large"}
    healthy = metrics["test_sets"]["healthy"]
    assert healthy["pixel"]["auroc"] is None and "no positive" in healthy["notes"]["pixel.auroc"]
    # calibrated on healthy validation data; the healthy test set's FPR is a held-out check of it (small data)
    for name, entry in metrics["calibration"]["thresholds"].items():
        assert entry["achieved_fpr"] <= entry["target_fpr"]
        assert healthy["calibrated"][name]["threshold"] == entry["threshold"]
        assert healthy["calibrated"][name]["fpr"] < 4 * entry["target_fpr"]
    assert metrics["evaluation"]["postprocessing"]["name"] == "none" and metrics["evaluation"]["bg_included"] is False
    curves = json.loads((run / "curves.json").read_text())["pixel"]["tumor"]
    assert curves["roc"]["fpr"][0] == 0.0 and curves["roc"]["tpr"][-1] == 1.0
    assert metrics["run"]["n_parameters"] > 0 and metrics["run"]["epochs"] == 2
    assert metrics["evaluation"]["checkpoint"].startswith("best-epoch")

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"]["init_args"]["image_size"] == 32  # linked from the dataset
    assert config["dataset"]["init_args"]["n_train"] == 3 and config["seed"] == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train/loss", "val/loss", "test/tumor/pixel/auroc", "test/tumor/calibrated/healthy_fpr@5%/dice",
            "calibration/healthy_fpr@1%/threshold"} <= scalars
    assert "test/tumor/pixel_pr_curve" in events.Tags()["tensors"]
    assert "val/input_reconstruction_map_mask" in images and "test/tumor/input_reconstruction_map_mask" in images
    assert "val/anomaly_map_in_roi" in events.Tags()["histograms"]


def test_finished_run_is_not_retrained_and_interrupted_run_resumes(configs, capsys):
    run = _run_dir(configs, "ae")
    before = (run / "metrics.json").stat().st_mtime_ns
    assert _run(configs, "ae") == 0
    assert "is finished" in capsys.readouterr().out
    assert (run / "metrics.json").stat().st_mtime_ns == before

    # a job interrupted after training (no metrics.json; its last.ckpt at the end of training) resumes there: nothing
    # is trained again, the same weights are tested, and the training time counts the earlier attempt, which here
    # trained "1000 s" (its checkpoint says so); mid-training resumes: tests/test_runner.py (killed sweep)
    first = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert 0 < checkpoint["callbacks"]["TrainingClock"]["train_seconds"] <= first["run"]["train_time_s"]
    checkpoint["callbacks"]["TrainingClock"]["train_seconds"] = 1000.0
    torch.save(checkpoint, last)
    assert _run(configs, "ae") == 0
    assert f"resuming {run} from last.ckpt" in capsys.readouterr().out
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["run"]["global_steps"] == first["run"]["global_steps"]
    assert resumed["test_sets"]["tumor"]["pixel"] == first["test_sets"]["tumor"]["pixel"]
    assert 1000.0 < resumed["run"]["train_time_s"] < 1000.0 + 10 * first["run"]["train_time_s"]
    assert resumed["run"]["wall_time_s"] > resumed["run"]["train_time_s"]


def test_baselines_through_the_default_command(configs, capsys):
    sweep = configs["root"] / "tiny_sweep.yaml"
    sweep.write_text(yaml.safe_dump({"methods": ["random", "intensity"], "datasets": [str(configs["dataset"])],
                                     "seeds": [0], "trainer": str(configs["trainer"])}))
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(configs["results"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "intensity" in out
    folder = configs["results"] / "tiny_sweep" / "runs" / "tiny_brain"
    random = json.loads((folder / "random" / "seed_0" / "metrics.json").read_text())
    assert abs(random["test_sets"]["tumor"]["pixel"]["auroc"] - 0.5) < 0.05  # chance level
    assert random["run"]["train_time_s"] == 0.0 and random["evaluation"]["checkpoint"] == "final weights"
    intensity = json.loads((folder / "intensity" / "seed_0" / "metrics.json").read_text())
    for name, result in random["test_sets"].items():  # both methods are scored on exactly the same pixels
        other = intensity["test_sets"][name]
        counted = (("pixel", ("n_roi_pixels", "n_lesion_pixels")), ("sample", ("n_slices", "n_anomalous_slices")))
        for part, keys in counted:
            assert {k: result[part][k] for k in keys} == {k: other[part][k] for k in keys}


class InputGradientMethod(AnomalyModule):
    """A user-side method (imported by class_path) whose map is |d sum(x^2) / dx| = 2x: it needs autograd at test."""

    requires_training = False
    needs_input_gradients = True

    def predict_anomaly(self, image: torch.Tensor) -> AnomalyOutput:
        image = image.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad((image**2).sum(), image)
        anomaly_map = gradient.abs()
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map), None)


def test_input_gradient_methods_get_autograd_at_test_time(configs):
    method = configs["root"] / "grad.yaml"
    method.write_text(f"class_path: {__name__}.InputGradientMethod\n")
    assert _run(configs, str(method)) == 0
    assert _run(configs, "intensity") == 0
    grad = json.loads((_run_dir(configs, "grad") / "metrics.json").read_text())["test_sets"]
    intensity = json.loads((_run_dir(configs, "intensity") / "metrics.json").read_text())["test_sets"]
    # 2x ranks pixels exactly as x does
    assert grad["tumor"]["pixel"]["auroc"] == pytest.approx(intensity["tumor"]["pixel"]["auroc"], abs=1e-6)


def test_list_command(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    methods = next(line for line in out.splitlines() if line.startswith("methods: ")).removeprefix("methods: ")
    assert {"ae", "intensity", "random", "vae", "fanogan", "dcgan"} <= set(methods.split(", "))
    assert "synthetic_brain" in out


def test_overwrite_starts_the_job_from_scratch(configs, capsys):
    assert _run(configs, "random") == 0
    run = _run_dir(configs, "random")
    stale = run / "checkpoints" / "stale.ckpt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("old")
    capsys.readouterr()
    assert _run(configs, "random", "--overwrite") == 0
    assert "is finished" not in capsys.readouterr().out
    assert not stale.exists() and json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_evaluation_profile_is_selectable_and_recorded(configs, capsys):
    evaluation = configs["root"] / "volumetric.yaml"
    evaluation.write_text(yaml.safe_dump({"fpr_targets": [0.05],
                                          "postprocessing": {"name": "baur", "roi_erosion_iterations": 1}}))
    assert _run(configs, "intensity", "--evaluation", str(evaluation), "--sweep", "volumetric") == 0
    run = configs["results"] / "volumetric" / "runs" / "tiny_brain" / "intensity" / "seed_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["postprocessing"] == {"name": "baur", "median_size": 5, "roi_erosion_iterations": 1,
                                                       "min_component_size": 8}
    assert metrics["calibration"]["postprocessing"] == "baur"
    assert list(metrics["calibration"]["thresholds"]) == ["healthy_fpr@5%"]
    assert list(metrics["test_sets"]["tumor"]["calibrated"]) == ["healthy_fpr@5%"]
    assert yaml.safe_load((run / "config.yaml").read_text())["evaluation"]["profile"] == "volumetric"
    # the protocol is part of the job's key: under the default protocol the job is a new one, the old run moves aside
    assert _run(configs, "intensity", "--sweep", "volumetric") == 0
    assert "configuration changed" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["postprocessing"]["name"] == "none"
    assert len(list(run.parent.glob(".seed_0.replaced-*"))) == 1


def test_vae_score_variants_through_run_leaderboard_and_report(configs):
    assert _run(configs, "vae", "methods.vae.channels=[4,8,16]", "methods.vae.z_dim=8") == 0
    run = _run_dir(configs, "vae")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["primary_variant"] == "combi"
    assert list(metrics["variants"]) == ["combi", "rec", "grad_kl", "grad_elbo", "grad_rec"]
    assert metrics["test_sets"] == metrics["variants"]["combi"]["test_sets"]
    thresholds = {name: entry["calibration"]["thresholds"]["healthy_fpr@5%"]["threshold"]
                  for name, entry in metrics["variants"].items()}
    # each variant calibrated on its own maps (grad_elbo ~ grad_rec when the reconstruction term dominates)
    assert len({thresholds[name] for name in ('combi', 'rec', 'grad_kl', 'grad_rec')}) == 4
    for entry in metrics["variants"].values():
        tumor = entry["test_sets"]["tumor"]
        assert 0.0 <= tumor["pixel"]["auroc"] <= 1.0 and "vs_healthy" in tumor["sample"]
    # the KL-gradient maps are non-zero (autograd was on at test time) and saved per variant
    assert metrics["variants"]["grad_kl"]["calibration"]["thresholds"]["healthy_fpr@5%"]["threshold"] > 0
    assert (run / "figures" / "qualitative_tumor[grad_kl].png").is_file()
    curves = json.loads((run / "curves.json").read_text())
    assert set(curves["variants"]) == set(metrics["variants"])
    board = (configs["results"] / "adhoc" / "leaderboard.csv").read_text()
    assert all(f"vae[{name}],tiny_brain,tumor" in board for name in metrics["variants"])
    report = (configs["results"] / "adhoc" / "report.md").read_text()
    shown = load_qualitative(run / "figures" / "qualitative_tumor.npz", "tumor")  # one file, every variant's map
    assert shown is not None and set(shown.maps) == set(metrics["variants"]) and shown.reconstruction is not None
    assert "(figures/qualitative_tiny_brain_tumor.png)" in report and "| vae[grad_kl]" in report


def test_mlp_vae_on_held_out_digits(configs):
    assert main(["run", "--method", "vae_mlp", "--dataset", "digits", "--trainer", str(configs["trainer"]),
                 "--results-dir", str(configs["results"]), "--quiet", "datasets.digits.held_out_class=7",
                 "datasets.digits.image_size=16"]) == 0
    metrics = json.loads((configs["results"] / "adhoc" / "runs" / "digits" / "vae_mlp" / "seed_0" /
                          "metrics.json").read_text())
    for entry in metrics["variants"].values():
        anomalous = entry["test_sets"]["anomalous"]["sample"]
        assert anomalous["n_slices"] == anomalous["n_anomalous_slices"] == 179  # every 7 of the 1797 digits
        assert 0.0 <= anomalous["vs_healthy"]["auroc"] <= 1.0
        assert anomalous["vs_healthy"]["n_healthy_slices"] == entry["test_sets"]["healthy"]["sample"]["n_slices"]
