"""The sweep report on a fake sweep folder: table values, failures, figures, missing curves, determinism."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from benchmark.markdown import markdown_table
from benchmark.report import format_mean_std, write_report

DATASET = "synth"
METHODS = ("ae", "intensity")  # intensity has no reconstruction: its grid's second column is blank
SEEDS = (0, 1)
FAILED = ("intensity", 0)  # this seed fails: metrics.json with status failed, no curves.json, no figures
HEADLINE = ("pixel/auroc", "pixel/auprc", "pixel/best_dice[oracle_test]", "calibrated/healthy_fpr@5%/dice",
            "sample/auroc")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def _scores(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per test set, the headline metrics of one run (NaN where the healthy set has no lesion)."""
    tumor = dict(zip(HEADLINE, rng.uniform(0.2, 0.95, len(HEADLINE)), strict=True))
    return {"healthy": dict.fromkeys(HEADLINE, float("nan")), "tumor": tumor}


def _metrics_json(method: str, seed: int, scores: dict[str, dict[str, float]]) -> dict:
    def result(values: dict[str, float], n_lesion: int) -> dict:
        finite = {key: (None if np.isnan(v) else float(v)) for key, v in values.items()}
        return {
            "pixel": {"auroc": finite["pixel/auroc"], "auprc": finite["pixel/auprc"],
                      "best_dice": finite["pixel/best_dice[oracle_test]"], "n_roi_pixels": 5000,
                      "n_lesion_pixels": n_lesion},
            "sample": {"auroc": finite["sample/auroc"], "n_slices": 40, "n_anomalous_slices": 10 if n_lesion else 0},
            "calibrated": {"healthy_fpr@5%": {"dice": finite["calibrated/healthy_fpr@5%/dice"]}},
        }

    return {"schema": "normbench.metrics/2", "status": "completed", "method": method, "dataset": DATASET,
            "seed": seed, "test_sets": {"healthy": result(scores["healthy"], 0), "tumor": result(scores["tumor"], 150)},
            "evaluation": {"profile": "default"}, "versions": {"python": "3.11.7", "torch": "2.3.0"}}


def _curves_json(rng: np.random.Generator) -> dict:
    fpr = np.sort(rng.uniform(0, 1, 20))
    tpr = np.sqrt(fpr)
    recall = np.linspace(0, 1, 20)
    return {"schema": "normbench.curves/1", "pixel": {
        "healthy": {"roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 0.0], "threshold": [1.0, 0.0]},
                    "pr": {"recall": [0.0], "precision": [0.0], "threshold": [0.0]},
                    "sample_scores": {"normal": rng.normal(1, 0.2, 30).tolist(), "anomalous": []}},
        "tumor": {"roc": {"fpr": [0.0, *fpr, 1.0], "tpr": [0.0, *tpr, 1.0], "threshold": list(range(22))},
                  "pr": {"recall": recall.tolist(), "precision": (1 - 0.8 * recall).tolist(),
                         "threshold": list(range(20))},
                  "sample_scores": {"normal": rng.normal(1, 0.2, 30).tolist(),
                                    "anomalous": rng.normal(2, 0.3, 10).tolist()}},
    }}


def _write_run(run: Path, method: str, seed: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    run.mkdir(parents=True)
    if (method, seed) == FAILED:
        error = {"type": "RuntimeError", "message": "boom in training",
                 "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: boom in training\n"}
        (run / "metrics.json").write_text(json.dumps({"status": "failed", "method": method, "dataset": DATASET,
                                                      "seed": seed, "error": error}))
        return {}
    scores = _scores(rng)
    (run / "metrics.json").write_text(json.dumps(_metrics_json(method, seed, scores)))
    (run / "curves.json").write_text(json.dumps(_curves_json(rng)))
    (run / "figures").mkdir()
    grid = rng.uniform(0, 1, (4 * 8, 4 * 8))
    if method == "intensity":
        grid[:, 8:16] = 0.0  # no reconstruction
    for test_set in ("healthy", "tumor"):
        plt.imsave(run / "figures" / f"qualitative_{test_set}.png", grid, cmap="gray", vmin=0.0, vmax=1.0)
    return scores


def _leaderboard(per_run: dict[tuple[str, int], dict]) -> pd.DataFrame:
    rows = []
    for method in METHODS:
        runs = {seed: per_run[method, seed] for seed in SEEDS if per_run[method, seed]}
        for test_set in ("healthy", "tumor"):
            row = {"method": method, "dataset": DATASET, "test_set": test_set, "n_seeds": len(runs),
                   "seeds": ";".join(map(str, runs)),
                   "status": "completed" if len(runs) == len(SEEDS) else "partial: 1/2 failed",
                   "failures": "" if len(runs) == len(SEEDS) else "seed 0: RuntimeError: boom in training"}
            for metric in HEADLINE:
                values = np.array([scores[test_set][metric] for scores in runs.values()])
                row[f"{metric}:mean"] = np.mean(values) if len(values) else np.nan
                row[f"{metric}:std"] = np.std(values, ddof=1) if len(values) > 1 else np.nan
            rows.append(row)
    rows.append({"method": "broken", "dataset": DATASET, "test_set": "-", "n_seeds": 0, "seeds": "",
                 "status": "failed", "failures": "seed 0: ValueError: bad config"})
    board = pd.DataFrame(rows)
    tumor = board["test_set"] == "tumor"
    board["rank"] = np.nan
    board.loc[tumor, "rank"] = board.loc[tumor, "pixel/auprc:mean"].rank(ascending=False)
    for column in ("wall_time_s", "train_time_s", "test_time_s", "n_parameters", "train_images_per_s",
                   "inference_images_per_s"):
        board[column] = 1.0
    board["precision"], board["devices"] = "32-true", 1
    board["evaluation"], board["postprocessing"] = "default", "none"
    board["version/torch"], board["version/pytorch-lightning"] = "2.3.0", "2.6.0"
    board["schema"] = "normbench.metrics/2"
    return board


@pytest.fixture
def sweep(tmp_path: Path) -> dict:
    root = tmp_path / "demo"
    rng = np.random.default_rng(0)
    per_run = {(method, seed): _write_run(root / "runs" / DATASET / method / f"seed_{seed}", method, seed, rng)
               for method in METHODS for seed in SEEDS}
    board = _leaderboard(per_run)
    board.to_csv(root / "leaderboard.csv", index=False)
    return {"root": root, "per_run": per_run, "board": board}


def _images(report: Path) -> list[Path]:
    return [report.parent / unquote(link) for link in IMAGE_LINK.findall(report.read_text())]


def _table_row(text: str, method: str, test_set: str) -> str:
    rows = [line for line in text.splitlines() if re.match(rf"\|\s*{method}\s*\|\s*{test_set}\s*\|", line)]
    assert len(rows) == 1, f"no single table row for {method} / {test_set}"
    return rows[0]


def test_report_table_failures_and_figures(sweep):
    report = write_report(sweep["root"])
    assert report == sweep["root"] / "report.md"
    text = report.read_text()
    assert "# NormBench report: `demo`" in text and "3 completed, 1 failed" in text
    assert "torch 2.3.0, pytorch-lightning 2.6.0" in text and "normbench.metrics" not in text
    assert "profile `default`, post-processing `none`" in text

    for method in METHODS:  # mean ± std recomputed from the per-seed values
        runs = [scores["tumor"] for (m, _), scores in sweep["per_run"].items() if m == method and scores]
        row = _table_row(text, method, "tumor")
        for metric in HEADLINE:
            values = np.array([scores[metric] for scores in runs])
            expected = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
            assert expected in row
    assert "± nan" not in text and "nan" not in _table_row(text, "intensity", "tumor")
    assert not re.search(r"\|\s*ae\s*\|\s*healthy\s*\|", text)  # no lesion metric: not in the table

    failures = text.split("### Failures")[1].split("###")[0]
    assert "`intensity` seed 0: RuntimeError: boom in training" in failures
    assert "`broken`: seed 0: ValueError: bad config (leaderboard)" in failures
    assert "`ae` seed 0, `intensity` seed 1. No curves.json for `broken`." in text  # lowest completed seed

    images = _images(report)
    names = {path.name for path in images}
    assert {"forest_synth_tumor.png", "curves_synth_tumor.png", "scores_synth.png"} <= names
    assert "forest_synth_healthy.png" not in names  # no lesions, no forest plot
    assert "curves_synth_healthy.png" not in names  # no lesions, no curves
    assert sum(path.name == "qualitative_tumor.png" for path in images) == len(METHODS)  # old runs: their PNGs
    assert "qualitative_healthy.png" not in names and "older runs" in text
    for path in images:
        assert path.is_file(), path
        assert mpimg.imread(path).ndim == 3


def test_report_without_curves_or_metric_columns_is_deterministic(sweep):
    root = sweep["root"]
    for run in (root / "runs" / DATASET).glob("*/seed_*"):
        (run / "curves.json").unlink(missing_ok=True)
    shutil.rmtree(root / "runs" / DATASET / "ae" / "seed_0" / "figures")
    (root / "runs" / DATASET / "ae" / "seed_1" / "figures" / "qualitative_tumor.png").write_bytes(b"not a png")
    text = write_report(root, primary="sample/auroc", metrics=["lesion_size/small/auprc"]).read_text()
    assert "No curves.json for `ae`, `broken`, `intensity`." in text and "curves_synth" not in text
    assert "No finite values (or no leaderboard column) for `lesion_size/small/auprc`" in text
    assert "runs/synth/ae/seed_" not in text and "runs/synth/intensity/seed_1/figures/qualitative_tumor.png" in text
    assert _table_row(text, "ae", "tumor").count("|") == 10  # sample/auroc is a headline column: no extra one
    assert all(path.is_file() for path in _images(root / "report.md"))
    assert write_report(root, primary="sample/auroc", metrics=["lesion_size/small/auprc"]).read_text() == text


def test_report_needs_the_leaderboard(tmp_path):
    with pytest.raises(FileNotFoundError, match="leaderboard"):
        write_report(tmp_path)


def test_format_and_markdown_table():
    assert format_mean_std(0.91234, 0.0104) == "0.912 ± 0.010"
    assert format_mean_std(0.5, float("nan")) == "0.500" and format_mean_std(float("nan"), 0.1) == "n/a"
    table = markdown_table(["a", "value"], [["x|y", "1.0"]], "lr").splitlines()
    assert table == ["| a    | value |", "| ---- | ----: |", "| x\\|y |   1.0 |"]


# ---- generative quality ---------------------------------------------------------------------------------------------
GAN_SSIM = {("gan", 0): (0.80, 0.60, 0.40), ("gan", 1): (0.70, 0.50, 0.20), ("dcgan", 0): (0.65, 0.55, 0.45)}


def _write_generative_run(root: Path, method: str, seed: int, rng: np.random.Generator) -> Path:
    """A completed generative run (gan: two score variants) with its samples, GIF and, for gan seed 0, losses in
    two TensorBoard event files (a resumed run: steps 6..9 logged twice, the later file's values count)."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    run = root / "runs" / DATASET / method / f"seed_{seed}"
    run.mkdir(parents=True)
    metrics = _metrics_json(method, seed, _scores(rng))
    ssim_max, ssim_mean, ssim_min = GAN_SSIM[method, seed]
    metrics["generative"] = {"ssim_max": ssim_max, "ssim_mean": ssim_mean, "ssim_min": ssim_min, "n_samples": 64,
                             "n_reference": 120, "reference": "test set 'healthy'"}
    if method == "gan":
        metrics["variants"] = {name: {"test_sets": metrics["test_sets"]} for name in ("izif", "ziz")}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "figures").mkdir()
    plt.imsave(run / "figures" / "samples.png", rng.uniform(0, 1, (17, 17)), cmap="gray")
    frames = [Image.fromarray(np.full((8, 8), value, np.uint8)) for value in (0, 255)]
    frames[0].save(run / "figures" / "samples_training.gif", save_all=True, append_images=frames[1:])
    if (method, seed) == ("gan", 0):
        for start, offset in ((0, 0.0), (6, 100.0)):
            writer = SummaryWriter(str(run / "tensorboard"), filename_suffix=f".part{start}")
            for step in range(start, start + 10):
                writer.add_scalar("train/generator_loss", offset + step, step)
                writer.add_scalar("train/discriminator_loss", offset - step, step)
            writer.close()
    return run


def test_report_without_generative_methods_has_no_generative_section(sweep):
    text = write_report(sweep["root"]).read_text()
    assert "Generative quality" not in text and "gan_losses" not in text and "SSIM" not in text


def test_generative_section_table_samples_and_losses(sweep):
    from benchmark.report_generative import loss_curves

    rng = np.random.default_rng(1)
    runs = {key: _write_generative_run(sweep["root"], *key, rng) for key in GAN_SSIM}
    report = write_report(sweep["root"])
    text = report.read_text()
    assert "**Generative quality** (methods that generate images" in text  # the reading guide
    section = text.split("### Generative quality")[1]
    assert text.count("### Generative quality") == 1
    table = section.split("Samples of the lowest seed")[0]
    for method, seeds in (("gan", (0, 1)), ("dcgan", (0,))):
        row = _table_row(table, method, ", ".join(map(str, seeds)))  # one row per method, variants merged
        for index in range(3):
            values = np.array([GAN_SSIM[method, seed][index] for seed in seeds])
            expected = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
            assert expected in row
        assert "64 x 120" in row and "test set 'healthy'" in row
    assert "gan[izif]" not in section
    images = _images(report)
    assert runs["gan", 0] / "figures" / "samples.png" in images  # the lowest seed's samples
    assert runs["dcgan", 0] / "figures" / "samples.png" in images
    assert "runs/synth/gan/seed_0/figures/samples_training.gif" in section
    losses = sweep["root"] / "figures" / "gan_losses_synth.png"
    assert losses in images and mpimg.imread(losses).ndim == 3
    assert "No generator / discriminator losses in the TensorBoard logs of `dcgan`." in section

    curves = loss_curves(runs["gan", 0] / "tensorboard")
    steps, values = curves["generator"]
    assert steps.tolist() == list(range(16))
    assert values.tolist() == [*range(6), *(100.0 + step for step in range(6, 16))]
    assert curves["discriminator / critic"][1][0] == 0.0 and curves["discriminator / critic"][1][-1] == 85.0
    assert loss_curves(runs["dcgan", 0] / "tensorboard") == {}
    assert write_report(sweep["root"]).read_text() == text  # deterministic
