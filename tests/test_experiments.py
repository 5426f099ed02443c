"""The experiment scripts of docs/validation.md on constructed study and run files: the convergence table and
figure pick each scorer's best variant, and the reproducibility comparison counts identical values."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _load(name: str):
    if str(EXPERIMENTS) not in sys.path:  # the scripts import each other as top-level modules
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sets(auroc: dict[str, float]) -> dict[str, dict[str, float]]:
    return {name: {"pixel_auroc": value, "pixel_auprc": value / 10, "sample_auroc": 0.5,
                   "sample_vs_healthy_auroc": None} for name, value in auroc.items()}


def _evaluation(method: str, minutes: float, step: int, variants: dict[str, dict[str, float]]) -> dict:
    return {"method": method, "checkpoint": f"train{minutes * 60:07.1f}s.ckpt", "train_s": minutes * 60,
            "global_step": step, "epoch": step // 10, "stage": None, "test_s": 2.0,
            "metrics": {variant: _sets(values) for variant, values in variants.items()}}


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    trained = {"method": "vae", "dataset": "brain", "seed": 0, "evaluations": {
        "vae@1": _evaluation("vae", 1.0, 100, {"rec": {"tumor": 0.40, "ms": 0.50, "stroke": 0.60},
                                               "grad": {"tumor": 0.70, "ms": 0.60, "stroke": 0.90}}),
        "vae@2": _evaluation("vae", 2.0, 200, {"rec": {"tumor": 0.45, "ms": 0.55, "stroke": 0.65},
                                               "grad": {"tumor": 0.75, "ms": 0.65, "stroke": 0.95}})}}
    baseline = {"method": "random", "dataset": "brain", "seed": 0, "baseline": True,
                "evaluations": {"random": {"test_s": 1.0, "metrics": {"-": _sets(
                    {"tumor": 0.5, "ms": 0.5, "stroke": 0.5})}}}}
    for study in (trained, baseline):
        folder = tmp_path / "brain" / study["method"]
        folder.mkdir(parents=True)
        (folder / "study.json").write_text(json.dumps(study))
    return tmp_path


def test_convergence_table_and_figure_use_each_scorers_best_variant(studies: Path) -> None:
    convergence = _load("convergence")
    rows = convergence.table(studies).splitlines()
    assert rows[0].startswith("| scorer | min | steps | tumor AUROC / AUPRC")
    body = [row for row in rows[2:]]
    assert body == [
        "| random | - | - | 0.500 / 0.050 | 0.500 / 0.050 | 0.500 / 0.050 | - | - |",
        "| vae[grad] | 1.0 | 100 | 0.700 / 0.070 | 0.600 / 0.060 | 0.900 / 0.090 | - | 2 |",
        "| vae[grad] | 2.0 | 200 | 0.750 / 0.075 | 0.650 / 0.065 | 0.950 / 0.095 | - | 2 |",
    ]
    out = studies / "figure.png"
    convergence.plot_study(studies, out)
    assert out.stat().st_size > 10_000


def _run(folder: Path, method: str, auroc: float, threads: int) -> None:
    run = folder / "runs" / "brain" / method / "seed_0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "status": "completed", "method": method, "run": {"torch_threads": threads, "wall_time_s": 9.0},
        "test_sets": {"tumor": {"pixel": {"auroc": auroc, "auprc": 0.1}, "sample": {"auroc": 0.7}}}}))


def test_reproducibility_counts_identical_values_and_the_largest_difference(tmp_path: Path) -> None:
    reproducibility = _load("reproducibility")
    left, right = tmp_path / "left", tmp_path / "right"
    for folder, ae in ((left, 0.70), (right, 0.65)):
        _run(folder, "ae", ae, threads=1 if folder is left else 2)
        _run(folder, "random", 0.5, threads=1)
    totals, rows = reproducibility.compare(left, right)
    assert totals == {"jobs": 2, "values": 6, "identical": 5}  # run-time fields are not compared
    by_entry = {row["entry"]: row for row in rows}
    assert by_entry["ae"]["pixel/auroc"] == pytest.approx(0.05)
    assert by_entry["random"]["pixel/auroc"] == 0.0


def test_oracle_restoration_is_the_subjects_own_scanner_without_noise() -> None:
    """The ideal restoration replays the generator's scanner draws: on a healthy subject it differs from the image by
    the Rician noise alone, and its residual finds a stroke almost perfectly."""
    oracle_residual = _load("oracle_residual")
    from datamodules.synthetic_brain import SyntheticBrainSpec, _make_subject

    spec = SyntheticBrainSpec(resolution_mm=4.0)
    healthy = _make_subject(spec, "sub-testhealthy-000")
    restored = oracle_residual.noise_free_scanner(healthy.healthy, spec, healthy.subject)
    brain = healthy.brain.astype(bool)
    residual = (healthy.image - restored)[brain]
    assert abs(float(residual.mean())) < 0.01 and float(residual.std()) < spec.noise_std_range[1] * 1.5
    assert oracle_residual.oracle(spec, "stroke", 1)["auroc"] > 0.95


def test_learning_bar_takes_each_methods_best_tumour_variant_and_applies_the_bar(tmp_path: Path) -> None:
    import pandas as pd

    bar = _load("learning_bar")

    def row(method: str, test_set: str, auroc: float, beats: str = "true") -> dict:
        return {"method": method, "dataset": "brain", "test_set": test_set, "status": "completed", "n_seeds": 3,
                "pixel/auroc:mean": auroc, "pixel/auroc:ci_low": auroc - 0.05, "pixel/auroc:ci_high": auroc + 0.05,
                "pixel/auprc:mean": auroc / 10, "beats_random": beats}

    board = pd.DataFrame([
        row("random", "tumor", 0.50, "n.a."), row("random", "stroke", 0.50, "n.a."),
        row("vae[rec]", "tumor", 0.60), row("vae[grad]", "tumor", 0.70), row("vae[rec]", "stroke", 0.95),
        row("vae[grad]", "stroke", 0.72),  # the stroke value of the tumour-best variant counts, not the best one
        row("ae", "tumor", 0.66, "false"), row("ae", "stroke", 0.80),
        row("gan", "tumor", 0.64), row("gan", "stroke", 0.76),
        {**row("other", "tumor", 0.99), "dataset": "digits"}])
    rows = bar.bar_rows(board, "brain")
    assert rows["entry"].tolist() == ["vae[grad]", "ae", "gan"]  # random excluded, other dataset ignored
    assert rows["learns"].tolist() == [True, False, False]  # ae: AUROC above the bar but not beating random
    assert rows["strong"].tolist() == [False, True, True]
    assert rows["stroke AUROC"].tolist() == [0.72, 0.80, 0.76]
    assert "| vae | `vae[grad]` | 3 | 0.700 [0.650, 0.750] | 0.0700 | true | 0.720 | yes | no |" in bar.markdown(rows)

    path = tmp_path / "leaderboard.csv"
    board.to_csv(path, index=False)
    assert bar.main([str(path), "--dataset", "brain"]) == 0
    assert bar.main([str(tmp_path / "missing.csv")]) == 2
    assert bar.main([str(path), "--dataset", "nowhere"]) == 2


def test_export_reference_keeps_results_and_linked_figures_not_checkpoints(tmp_path: Path) -> None:
    export = _load("export_reference")
    sweep = tmp_path / "sweep"
    run = sweep / "runs" / "brain" / "ae" / "seed_0"
    for path in (run / "checkpoints" / "last.ckpt", run / "figures" / "samples.png", run / "figures" / "grid.png",
                 run / "metrics.json", run / "subject_counts.npz", run / "job.json", run / "tensorboard" / "events",
                 sweep / "figures" / "forest.png", sweep / "leaderboard.csv"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    (sweep / "report.md").write_text("![a](figures/forest.png) ![b](runs/brain/ae/seed_0/figures/samples.png) "
                                     "[web](https://example.org/x.png) [gone](figures/missing.png)")
    destination = tmp_path / "reference"
    (destination / "stale").mkdir(parents=True)
    assert export.main([str(sweep), str(destination)]) == 0
    kept = sorted(str(path.relative_to(destination)) for path in destination.rglob("*") if path.is_file())
    assert kept == ["figures/forest.png", "leaderboard.csv", "report.md", "runs/brain/ae/seed_0/figures/samples.png",
                    "runs/brain/ae/seed_0/job.json", "runs/brain/ae/seed_0/metrics.json",
                    "runs/brain/ae/seed_0/subject_counts.npz"]
    (sweep / "report.md").unlink()
    assert export.main([str(sweep), str(tmp_path / "other")]) == 2
