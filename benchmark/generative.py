"""Generative quality of methods that sample images (``lightning_modules.base.GenerativeModel``, e.g. GANs).

:class:`GenerativeQualityCallback`, added by ``benchmark/job.py`` for such methods only:

* during ``fit``: a grid generated from fixed noise (drawn once from ``FIXED_NOISE_SEED``) at the start, every
  ``every_n_epochs`` epochs and at the end, logged to TensorBoard (``samples/fixed_noise``) and saved as
  ``figures/sample_frames/step_<global step>.png``; at the end of ``fit`` the frames on disk (a resumed run keeps
  the earlier ones) become ``figures/samples_training.gif``;
* at the end of ``trainer.test`` (the weights under test): ``n_samples`` samples from ``SAMPLE_SEED``, each scored
  by its best SSIM against every held-out healthy image (the ``healthy`` test set, else the validation split;
  :mod:`benchmark.metrics.generative`), a grid of them in ``figures/samples.png`` and TensorBoard
  (``samples/evaluation``), and the summary in :attr:`GenerativeQualityCallback.result` (``metrics.json``'s
  ``generative``).

Everything runs on global rank zero only (generation calls the LightningModule directly, never the DDP wrapper,
so no collective is involved), under the trainer's precision context, with the random states restored afterwards
so that sampling never changes a run's training.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from benchmark.callbacks import tensorboard_writer
from benchmark.metrics import MethodOutputError
from benchmark.metrics.generative import best_ssim, protocol, ssim_defined, summarise
from benchmark.naming import SAMPLE_FRAMES, SAMPLES_GIF, SAMPLES_PNG, sample_frame_name
from datamodules.base import HEALTHY_TEST_SET, AnomalyDataModule
from lightning_modules.base import GenerativeModel

FIXED_NOISE_SEED = 0  # the noise of the training grid (the same in every run and after a resume)
SAMPLE_SEED = 1  # the noise of the scored samples
GRID_SAMPLES = 64  # the most samples in a grid (8 x 8)
GENERATE_BATCH = 64  # samples per generate() call
MAX_GIF_FRAMES = 60
GIF_MAX_SIDE = 640  # GIF frames are shrunk to at most this many pixels per side
GIF_FRAME_MS = 250
RANGE_TOLERANCE = 1e-3  # generated values may leave [0, 1] by this much (rounding); they are then clipped
FRAME_PATTERN = re.compile(r"step_(\d+)\.png")


# ---- generating -----------------------------------------------------------------------------------------------------
def check_samples(images: Any, n: int, shape: tuple[int, ...], method: str) -> Tensor:
    """``images`` as float32 in [0, 1] after checking the ``generate`` contract (MethodOutputError naming
    ``method`` otherwise): a tensor [n, *shape] of finite values in [0, 1]."""
    if not isinstance(images, Tensor):
        raise MethodOutputError(f"method {method}: generate must return a Tensor, got {type(images).__name__}")
    if tuple(images.shape) != (n, *shape):
        raise MethodOutputError(f"method {method}: generate returned shape {tuple(images.shape)} for {n} noise "
                                f"draws, expected {(n, *shape)} (the dataset's image shape)")
    images = images.detach().float()
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        raise MethodOutputError(f"method {method}: generate returned NaN/Inf values ({int((~finite).sum())} of "
                                f"{images.numel()})")
    lo, hi = float(images.min()), float(images.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise MethodOutputError(f"method {method}: generate must return images in [0, 1], got values in "
                                f"[{lo:.4g}, {hi:.4g}]")
    return images.clamp(0.0, 1.0)


def _forked_rng(module: pl.LightningModule):
    """A context that restores the torch random states (CPU, and the module's CUDA device) on exit."""
    devices = [module.device.index or 0] if module.device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def generate(trainer: pl.Trainer, module: pl.LightningModule, noise: Tensor, shape: tuple[int, ...],
             method: str) -> Tensor:
    """Checked samples (float32, module's device) for ``noise``: eval mode, no autograd, the trainer's precision
    context, ``GENERATE_BATCH`` draws per call; the module's train / eval mode and the random states restored."""
    was_training = module.training
    module.eval()
    try:
        with _forked_rng(module), torch.no_grad(), trainer.precision_plugin.forward_context():
            images = [check_samples(module.generate(chunk), len(chunk), shape, method)
                      for chunk in noise.split(GENERATE_BATCH)]
    finally:
        module.train(was_training)
    return torch.cat(images)


def draw_noise(module: GenerativeModel, n: int, seed: int, method: str) -> Tensor:
    """``n`` noise draws of the method from a generator seeded with ``seed``."""
    noise = module.sample_noise(n, generator=torch.Generator().manual_seed(seed))
    if not isinstance(noise, Tensor) or noise.ndim == 0 or len(noise) != n:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise MethodOutputError(f"method {method}: sample_noise({n}) must return a Tensor with {n} rows, got {got}")
    return noise


# ---- grids and files ------------------------------------------------------------------------------------------------
def sample_grid(images: Tensor, padding: int = 1) -> Tensor:
    """[C', H', W'] grid of ``images`` [n,C,H,W] in [0, 1], ceil(sqrt(n)) per row, white separators; C' = C for
    grey or RGB images, else 1 (the channel mean)."""
    images = images.detach().float().cpu()
    if images.shape[1] not in (1, 3):
        images = images.mean(dim=1, keepdim=True)
    n, channels, height, width = images.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.ones(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for index, image in enumerate(images):
        top, left = padding + (index // columns) * (height + padding), padding + (index % columns) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def to_pil(grid: Tensor) -> Image.Image:
    """A [1 or 3, H, W] tensor in [0, 1] as an 8-bit grey or RGB image."""
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def frame_steps(folder: Path) -> list[tuple[int, Path]]:
    """The ``step_<n>.png`` frames of a folder, in step order."""
    found = [(int(match.group(1)), path) for path in folder.glob("step_*.png")
             if (match := FRAME_PATTERN.fullmatch(path.name))]
    return sorted(found)


def subsample(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` items, evenly spaced, the first and last always kept."""
    if len(items) <= limit:
        return list(items)
    keep = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in keep]


def _gif_frame(path: Path, step: int) -> Image.Image | None:
    """One frame shrunk to ``GIF_MAX_SIDE`` with ``step <n>`` written above it (``None`` if unreadable)."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB" if opened.mode in ("RGB", "RGBA", "P") else "L")
    except (OSError, ValueError):
        return None
    scale = min(1.0, GIF_MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    header = 14
    canvas = Image.new(image.mode, (max(image.width, 80), image.height + header), 0)
    canvas.paste(image, (0, header))
    ImageDraw.Draw(canvas).text((2, 1), f"step {step}", fill=255 if image.mode == "L" else (255, 255, 255))
    return canvas


def write_gif(frames_dir: Path, path: Path, max_frames: int = MAX_GIF_FRAMES) -> int:
    """The frames of ``frames_dir`` in step order (at most ``max_frames``, evenly spaced) as a looping GIF;
    returns the number of frames written (no file without any frame)."""
    frames = [frame for step, file in subsample(frame_steps(frames_dir), max_frames)
              if (frame := _gif_frame(file, step)) is not None]
    if not frames:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [GIF_FRAME_MS] * (len(frames) - 1) + [4 * GIF_FRAME_MS]  # rest on the last frame
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return len(frames)


def reference_images(trainer: pl.Trainer) -> tuple[np.ndarray, str]:
    """The held-out healthy images [N,C,H,W] (the ``healthy`` test set, else the validation split) and their name."""
    datamodule = trainer.datamodule
    if not isinstance(datamodule, AnomalyDataModule):
        raise TypeError("generative quality needs an AnomalyDataModule (its healthy test set or validation split)")
    splits = datamodule._splits
    if HEALTHY_TEST_SET in splits.tests:
        return splits.tests[HEALTHY_TEST_SET].images, f"test set '{HEALTHY_TEST_SET}'"
    return splits.val.images, "validation split"


# ---- the callback ---------------------------------------------------------------------------------------------------
class GenerativeQualityCallback(pl.Callback):
    """Fixed-noise sample grids over training (TensorBoard, PNG frames, a GIF) and, at test time, the best-SSIM
    generative quality of ``n_samples`` samples (see the module docstring). ``result`` holds the summary after
    ``trainer.test`` on global rank zero (``None`` before, and on other ranks)."""

    def __init__(self, method_name: str, every_n_epochs: int = 1, n_samples: int = 64,
                 grid_samples: int = GRID_SAMPLES, max_gif_frames: int = MAX_GIF_FRAMES) -> None:
        if n_samples < 1 or grid_samples < 1 or max_gif_frames < 2:
            raise ValueError(f"need n_samples >= 1, grid_samples >= 1 and max_gif_frames >= 2, got {n_samples}, "
                             f"{grid_samples}, {max_gif_frames}")
        self.method_name = method_name
        self.every_n_epochs = max(1, every_n_epochs)
        self.n_samples = n_samples
        self.grid_samples = grid_samples
        self.max_gif_frames = max_gif_frames
        self.result: dict[str, Any] | None = None
        self._fixed_noise: Tensor | None = None

    def _module(self, pl_module: pl.LightningModule) -> GenerativeModel:
        if not isinstance(pl_module, GenerativeModel):
            raise TypeError(f"method {self.method_name}: {type(pl_module).__name__} is not a GenerativeModel "
                            "(sample_noise and generate)")
        return pl_module

    @staticmethod
    def _figures(trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / "figures"

    @staticmethod
    def _shape(trainer: pl.Trainer) -> tuple[int, ...]:
        return tuple(reference_images(trainer)[0].shape[1:])

    # ---- training: fixed-noise frames -------------------------------------------------------------------------------
    def _frame(self, trainer: pl.Trainer, pl_module: pl.LightningModule, again: bool = True) -> None:
        """Grid of the fixed noise at the current step: TensorBoard and ``sample_frames/step_<n>.png`` (``again``:
        also when that step's frame exists, else it is kept)."""
        path = self._figures(trainer) / SAMPLE_FRAMES / sample_frame_name(trainer.global_step)
        if not trainer.is_global_zero or (path.exists() and not again):
            return
        module = self._module(pl_module)
        if self._fixed_noise is None:
            self._fixed_noise = draw_noise(module, self.grid_samples, FIXED_NOISE_SEED, self.method_name)
        grid = sample_grid(generate(trainer, pl_module, self._fixed_noise, self._shape(trainer), self.method_name))
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil(grid).save(path)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_image("samples/fixed_noise", grid, global_step=trainer.global_step, dataformats="CHW")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._frame(trainer, pl_module, again=False)  # the untrained generator (a resumed run has its frame)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs == 0:
            self._frame(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._frame(trainer, pl_module, again=False)  # unless the last epoch's frame is at this step
        figures = self._figures(trainer)
        write_gif(figures / SAMPLE_FRAMES, figures / SAMPLES_GIF, self.max_gif_frames)

    # ---- test: generative quality -----------------------------------------------------------------------------------
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        module = self._module(pl_module)
        references, source = reference_images(trainer)
        noise = draw_noise(module, self.n_samples, SAMPLE_SEED, self.method_name)
        samples = generate(trainer, pl_module, noise, tuple(references.shape[1:]), self.method_name)
        grid = sample_grid(samples[:self.grid_samples])
        self._figures(trainer).mkdir(parents=True, exist_ok=True)
        to_pil(grid).save(self._figures(trainer) / SAMPLES_PNG)
        self.result = self._score(samples, references, source)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_image("samples/evaluation", grid, global_step=trainer.global_step, dataformats="CHW")
        scalars = {f"generative/{key}": self.result[key] for key in ("ssim_max", "ssim_mean", "ssim_min")
                   if self.result[key] is not None}
        if trainer.logger is not None and scalars:
            trainer.logger.log_metrics(scalars, step=trainer.global_step)

    def _score(self, samples: Tensor, references: np.ndarray, source: str) -> dict[str, Any]:
        """The summary of the samples' best SSIM (null values, with a note, for images smaller than the window)."""
        info = {"reference": source, "sample_seed": SAMPLE_SEED, "fixed_noise_seed": FIXED_NOISE_SEED}
        if not ssim_defined(*samples.shape[-2:]):
            return {"ssim_max": None, "ssim_mean": None, "ssim_min": None, "n_samples": len(samples),
                    "n_reference": len(references), **info, "protocol": protocol(),
                    "note": f"images of {samples.shape[-2]} x {samples.shape[-1]} pixels are smaller than the SSIM "
                            "window: SSIM undefined"}
        summary = summarise(best_ssim(samples, references), len(references))
        described = summary.pop("protocol")
        return {**summary, **info, "protocol": described}
