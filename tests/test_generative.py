"""Generative quality: best SSIM against scikit-image and a brute-force loop, the callback's files, a tiny
generative method through ``run_job``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.metrics import structural_similarity
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from benchmark.config import ComponentConfig, TrainerProfile
from benchmark.generative import (
    GenerativeQualityCallback,
    check_samples,
    frame_steps,
    generate,
    sample_grid,
    subsample,
    write_gif,
)
from benchmark.job import Job, _build_trainer, run_job
from benchmark.leaderboard import read_leaderboard, write_leaderboard
from benchmark.metrics import EvaluationSettings, MethodOutputError
from benchmark.metrics.generative import best_ssim, pairwise_ssim, summarise
from benchmark.report import write_report
from benchmark.report_generative import loss_curves
from lightning_modules.base import AnomalyModule, AnomalyOutput, GenerativeModel
from lightning_modules.baselines import IntensityBaseline

SKIMAGE = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}
# torchmetrics' map with its 5-pixel border cropped vs scikit-image (float64): measured differences up to 3e-6 in
# float32 (rounding; largest for 11 x 11 images, whose valid region is one pixel) and 3e-16 in float64
FLOAT32_TOL, FLOAT64_TOL = 1e-5, 1e-12


def _images(n: int, channels: int = 1, size: int = 24, seed: int = 0) -> Tensor:
    """Smooth blobs plus noise in [0, 1]: SSIM values spread over (0, 1) instead of all near 0."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = torch.rand(n, channels, 2, generator=g) - 0.5
    blob = torch.exp(-((x - centre[..., :1, None]) ** 2 + (y - centre[..., 1:, None]) ** 2) / 0.2)
    return (0.7 * blob + 0.3 * torch.rand(n, channels, size, size, generator=g)).clamp(0, 1)


def _skimage(a: Tensor, b: Tensor) -> float:
    a64, b64 = a.double().numpy(), b.double().numpy()
    return structural_similarity(a64, b64, channel_axis=0, **SKIMAGE)


# ---- the metric -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("channels", "size"), [(1, 24), (3, 16), (1, 11), (1, 64)])
def test_ssim_matches_scikit_image(channels, size):
    samples, references = _images(3, channels, size, seed=1), _images(4, channels, size, seed=2)
    expected = torch.tensor([[_skimage(s, r) for r in references] for s in samples], dtype=torch.float64)
    assert float(expected.min()) < 0.9  # not a trivial all-alike case
    for dtype, tolerance in ((torch.float32, FLOAT32_TOL), (torch.float64, FLOAT64_TOL)):
        got = pairwise_ssim(samples.to(dtype), references.to(dtype))
        assert got.shape == (3, 4) and got.dtype == dtype
        assert float((got.double() - expected).abs().max()) <= tolerance, dtype


def test_best_ssim_equals_a_brute_force_loop_for_any_chunking():
    samples, references = _images(7, seed=3), _images(11, seed=4)
    references[5] = samples[2]  # a sample identical to a reference gets 1
    brute = torch.tensor([max(_skimage(s, r) for r in references) for s in samples], dtype=torch.float64)
    for chunk_size in (1, 5, 11, 30, None):
        got = best_ssim(samples, references.numpy(), chunk_size=chunk_size)  # NumPy references (memory maps)
        assert float((got.double() - brute).abs().max()) <= FLOAT32_TOL, chunk_size
    assert got[2] == pytest.approx(1.0, abs=1e-6)


def test_summary_and_bad_input():
    best = torch.tensor([0.2, 0.5, 0.8])
    summary = summarise(best, n_reference=10)
    assert summary["ssim_max"] == pytest.approx(0.8) and summary["ssim_min"] == pytest.approx(0.2)
    assert summary["ssim_mean"] == pytest.approx(0.5) and summary["n_samples"] == 3 and summary["n_reference"] == 10
    assert "11 x 11" in summary["protocol"]["window"] and summary["protocol"]["data_range"] == 1.0
    with pytest.raises(ValueError, match="at least 11 x 11"):
        best_ssim(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(1, 16, 16\).*\(3, 16, 16\)"):
        best_ssim(torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="finite"):
        summarise(torch.tensor([0.5, math.nan]), 3)


def test_generate_contract_errors_name_the_method():
    good = torch.rand(4, 1, 16, 16)
    assert check_samples(good.to(torch.bfloat16), 4, (1, 16, 16), "gan").dtype == torch.float32
    with pytest.raises(MethodOutputError, match=r"method gan: generate returned shape \(4, 16, 16\)"):
        check_samples(good[:, 0], 4, (1, 16, 16), "gan")
    with pytest.raises(MethodOutputError, match="method gan: generate returned NaN/Inf values"):
        check_samples(torch.where(good > 0.5, math.nan, good), 4, (1, 16, 16), "gan")
    tanh_output = good.clone()
    tanh_output[0, 0, 0, 0] = -1.0  # a generator left in [-1, 1]
    with pytest.raises(MethodOutputError, match=r"method gan: generate must return images in \[0, 1\], got .*\[-1, "):
        check_samples(tanh_output, 4, (1, 16, 16), "gan")


def test_generative_samples_setting():
    assert EvaluationSettings().generative_samples == 64
    # left out of the job key at its default, so that finished runs of every method keep their key
    assert "generative_samples" not in EvaluationSettings().to_mapping()
    settings = EvaluationSettings.from_mapping({"generative_samples": 128}, "custom")
    assert settings.to_mapping()["generative_samples"] == 128 and settings.describe()["generative_samples"] == 128
    assert EvaluationSettings.from_mapping(settings.to_mapping()) == settings
    with pytest.raises(ValueError, match="generative_samples must be > 0"):
        EvaluationSettings(generative_samples=0)
    for profile in ("default", "baur"):
        text = (Path(__file__).parent.parent / "configs" / "evaluation" / f"{profile}.yaml").read_text()
        assert yaml.safe_load(text)["generative_samples"] == 64


# ---- grids and the GIF ----------------------------------------------------------------------------------------------
def test_grid_frames_and_gif(tmp_path):
    grid = sample_grid(torch.rand(10, 1, 8, 8))  # 4 per row, 3 rows, 1-pixel separators
    assert grid.shape == (1, 3 * 9 + 1, 4 * 9 + 1)
    assert sample_grid(torch.rand(2, 5, 8, 8)).shape[0] == 1 and sample_grid(torch.rand(2, 3, 8, 8)).shape[0] == 3
    folder = tmp_path / "frames"
    folder.mkdir()
    for step in (0, 5, 10, 100, 1000, 20):
        Image.fromarray(np.full((20, 20), step % 256, np.uint8)).save(folder / f"step_{step}.png")
    (folder / "step_x.png").write_text("not a frame")
    assert [step for step, _ in frame_steps(folder)] == [0, 5, 10, 20, 100, 1000]  # numeric order
    assert subsample(list(range(100)), 60)[0] == 0 and subsample(list(range(100)), 60)[-1] == 99
    assert len(subsample(list(range(100)), 60)) == 60 and subsample([1, 2], 60) == [1, 2]
    assert write_gif(folder, tmp_path / "out.gif", max_frames=4) == 4
    with Image.open(tmp_path / "out.gif") as gif:
        assert gif.n_frames == 4
    assert write_gif(tmp_path / "empty", tmp_path / "none.gif") == 0 and not (tmp_path / "none.gif").exists()


# ---- a tiny generative method through run_job -----------------------------------------------------------------------
class TinyGenerator(AnomalyModule):
    """A linear autoencoder around the mean training image; its decoder doubles as a generator of 8-d standard
    normal noise (samples: the mean image plus a learned linear variation)."""

    def __init__(self, image_size: int = 32, in_channels: int = 1, z_dim: int = 8, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.shape = (in_channels, image_size, image_size)
        pixels = math.prod(self.shape)
        self.encoder, self.decoder = nn.Linear(pixels, z_dim), nn.Linear(z_dim, pixels)
        self.register_buffer("mean", torch.zeros(pixels))  # running mean of the training images
        self.register_buffer("count", torch.zeros(()))

    def decode(self, z: Tensor) -> Tensor:
        return (self.mean + 0.1 * torch.tanh(self.decoder(z))).clamp(0, 1).view(-1, *self.shape)

    def training_step(self, batch, batch_idx):
        image = batch["image"]
        self.count += len(image)
        self.mean += (image.flatten(1).sum(0) - len(image) * self.mean) / self.count
        loss = nn.functional.mse_loss(self.decode(self.encoder(image.flatten(1))), image)
        self.log("train/loss", loss)
        self.log("train/generator_loss", loss)  # the decoder's loss, under the tag the report plots for GANs
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        reconstruction = self.decode(self.encoder(image.flatten(1)))
        anomaly_map = (image - reconstruction).abs().mean(dim=1, keepdim=True)
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map), reconstruction)

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.hparams.z_dim, generator=generator)

    def generate(self, noise: Tensor) -> Tensor:
        return self.decode(noise.to(self.device))


class CopyGenerator(TinyGenerator):
    """Untrained; its 'samples' are exact copies of the first healthy test images (the SSIM references)."""

    requires_training = False

    def generate(self, noise: Tensor) -> Tensor:
        return torch.from_numpy(np.array(self.trainer.datamodule.splits.tests["healthy"].images[:len(noise)]))


class NoisyGenerator(TinyGenerator):
    """Draws from the global random stream in generate (the callback must not let that change training)."""

    def generate(self, noise: Tensor) -> Tensor:
        return self.decode(noise + 0.01 * torch.randn_like(noise))


def test_generation_under_bf16_restores_mode_and_random_state():
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False)
    module = NoisyGenerator().train()
    noise = module.sample_noise(70, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    with trainer.precision_plugin.forward_context():
        assert module.decoder(noise).dtype == torch.bfloat16  # the autocast the samples are generated under
    images = generate(trainer, module, noise, (1, 32, 32), "noisy")
    assert images.shape == (70, 1, 32, 32) and images.dtype == torch.float32  # two generate calls of <= 64
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert module.training and torch.equal(torch.get_rng_state(), state)
    assert best_ssim(images[:2], images[:3]).dtype == torch.float32


TINY_DATA = {"n_train": 3, "n_val": 1, "n_test_healthy": 1, "n_test_per_lesion": 1, "n_unlabelled": 0,
             "lesion_kinds": ["tumor"], "resolution_mm": 4.0, "image_size": 32, "batch_size": 16,
             "min_lesion_pixels": 3}
TINY_TRAINER = {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "log_every_n_steps": 1,
                "num_sanity_val_steps": 0, "deterministic": True}


def _job(data_root: Path, samples: int = 16, method: str = "TinyGenerator", epochs: int = 2) -> Job:
    return Job(ComponentConfig("tiny_gen", f"{__name__}.{method}", {}, "test"),
               ComponentConfig("tiny_brain", "datamodules.synthetic_brain.SyntheticBrainDataModule",
                               {"data_root": str(data_root), **TINY_DATA}, "test"),
               TrainerProfile("tiny_cpu", {**TINY_TRAINER, "max_epochs": epochs}, None, 1, "test"), 0,
               EvaluationSettings(generative_samples=samples))


@pytest.fixture(scope="module")
def generative_run(tmp_path_factory) -> dict:
    """Two epochs in two goes: one epoch, then (metrics.json removed, as after a crash) resumed to two."""
    root = tmp_path_factory.mktemp("generative")
    sweep = root / "sweep"
    run_dir = sweep / "runs" / "tiny_brain" / "tiny_gen" / "seed_0"
    run_job(_job(root / "data", epochs=1), run_dir, progress=False)
    first_frame = (run_dir / "figures" / "sample_frames" / "step_0.png").stat().st_mtime_ns
    (run_dir / "metrics.json").unlink()
    metrics = run_job(_job(root / "data"), run_dir, progress=False)
    return {"root": root, "sweep": sweep, "run": run_dir, "metrics": metrics, "first_frame": first_frame}


def test_tiny_generator_through_run_job(generative_run):
    assert isinstance(TinyGenerator(), GenerativeModel)
    run = generative_run["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    generative = metrics["generative"]
    assert generative == generative_run["metrics"]["generative"]
    assert 0 < generative["ssim_min"] <= generative["ssim_mean"] <= generative["ssim_max"] <= 1
    assert generative["n_samples"] == 16 and generative["reference"] == "test set 'healthy'"
    assert generative["n_reference"] > 0 and metrics["evaluation"]["generative_samples"] == 16
    assert yaml.safe_load((run / "config.yaml").read_text())["evaluation"]["generative_samples"] == 16

    figures = run / "figures"
    with Image.open(figures / "samples.png") as samples:
        assert samples.size == (4 * 33 + 1, 4 * 33 + 1)  # 16 samples of 32 x 32, 4 x 4
    with Image.open(figures / "samples_training.gif") as gif:
        assert gif.n_frames >= 2
    steps = [step for step, _ in frame_steps(figures / "sample_frames")]
    assert steps[0] == 0 and steps[-1] == metrics["run"]["global_steps"] and len(steps) == 3  # start, 2 epochs
    assert (figures / "sample_frames" / "step_0.png").stat().st_mtime_ns == generative_run["first_frame"]  # kept

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    images = set(events.Tags()["images"])
    assert {"samples/fixed_noise", "samples/evaluation"} <= images
    assert len(events.Images("samples/fixed_noise")) == 3
    assert "generative/ssim_mean" in events.Tags()["scalars"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 2  # one per go


def test_leaderboard_and_report_of_a_generative_run(generative_run):
    sweep, generative = generative_run["sweep"], generative_run["metrics"]["generative"]
    board = read_leaderboard(write_leaderboard(sweep))
    assert set(board["test_set"]) == {"healthy", "tumor"}
    for key in ("ssim_max", "ssim_mean", "ssim_min"):
        assert board[f"generative/{key}"].tolist() == pytest.approx([generative[key]] * 2, abs=1e-12)
    text = write_report(sweep).read_text()
    section = text.split("### Generative quality")[1]
    assert f"{generative['ssim_mean']:.3f}" in section
    assert "(runs/tiny_brain/tiny_gen/seed_0/figures/samples.png)" in section
    assert "(figures/gan_losses_tiny_brain.png)" in section  # train/generator_loss from both event files
    steps, _ = loss_curves(generative_run["run"] / "tensorboard")["generator"]
    assert steps[0] == 0 and steps[-1] == generative_run["metrics"]["run"]["global_steps"] - 1


def test_a_generator_of_exact_copies_scores_one(generative_run):
    metrics = run_job(_job(generative_run["root"] / "data", samples=4, method="CopyGenerator"),
                      generative_run["root"] / "copies", progress=False)
    generative = metrics["generative"]
    assert generative["ssim_max"] == pytest.approx(1.0, abs=1e-5)
    assert generative["ssim_min"] == pytest.approx(1.0, abs=1e-5)
    assert not (generative_run["root"] / "copies" / "figures" / "samples_training.gif").exists()  # not trained


def test_only_generative_methods_get_the_callback(tmp_path):
    job = _job(tmp_path / "data")
    for model, expected in ((TinyGenerator(), 1), (IntensityBaseline(), 0)):
        trainer, _ = _build_trainer(job, model, tmp_path / "run", progress=False)
        assert sum(isinstance(c, GenerativeQualityCallback) for c in trainer.callbacks) == expected
