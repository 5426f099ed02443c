"""AutoDDPM: mask, stitch and re-sample (Bercea et al., ICML 2023 IMLH workshop, arXiv 2305.19643).

AutoDDPM trains nothing: it evaluates the weights of a trained AnoDDPM (Gaussian) model, which the NormBench runner
links by the ``weights_from`` argument (the ``anoddpm`` job of the same dataset, seed, trainer profile and
protocol; trained first when it has not run). Faithful to the GenAI_UAD port (``model_zoo/ddpm.py``,
``get_auto_anomaly``; ``configs/autoddpm.yaml``: t_recon 300, t_inpaint 50, 5 resamples):

1. x_rec: partial diffusion from ``t_recon`` (the AnoDDPM reconstruction at that level), clamped to [0, 1];
2. likely-anomaly mask: r = |x - x_rec| divided by its per-image 95th percentile, binarised above its 95th
   quantile, dilated by a 3x3 square (one iteration) (:func:`likely_anomaly_mask`);
3. RePaint-style inpainting of the mask from x_rec noised to ``t_inpaint``: at every step the region outside the
   mask is the input noised to the step's level, the inside one reverse step, ``resamples`` rounds per step with a
   re-noising in between (:func:`repaint`); outside the mask the result is the input itself;
4. map = |x - x_rec| (x smoothed LPIPS saliency, see below) * |x - x_inpainted|, score its mean; the reconstruction
   is the inpainted image.

Deviations and readings (config choices where they matter):

* **LPIPS saliency only with local weights.** As in GenAI, the clipped residual ratio is multiplied by the
  LPIPS-SqueezeNet spatial map of (x, x_rec) before thresholding, and the first residual of the final map by that
  map Gaussian-smoothed (sigma 2; a 17 x 17 kernel with zero padding, scipy reflects the border). NormBench never
  downloads weights: the LPIPS network loads from ``NORMBENCH_LPIPS_DIR`` (``benchmark/metrics/perceptual.py``);
  without it (or with ``lpips=False``) the saliency factor is omitted, with a warning. The clipped ratio alone ties
  the top 5 % of pixels at 1, so that a strict ``> quantile`` rule would flag nothing: without saliency the mask
  uses the unclipped ratio (equivalently: r above its 95th percentile).
* ``mask_scope="image"`` takes the threshold quantile per image; GenAI takes it over the whole batch tensor and
  evaluates at batch size 1, which is the same thing. ``"batch"`` reproduces the batch-global rule.
* The re-noising between resampling rounds goes from the step's target level back to its level with the exact
  q(x_t | x_s) (GenAI uses beta_{t-1} for beta_t, an index slip); the last step (t = 0) denoises to the clean
  image and stitches it with the clean input (GenAI's loop reuses the previous step's output there).
* A residual whose 95th percentile is 0 (a perfect reconstruction) is divided by 1e-8 instead of 0.
* ``sampler`` / ``inference_steps`` override the upstream model's sampler (e.g. DDIM on CPU); ``None`` keeps it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from benchmark.metrics.perceptual import LPIPS, load_lpips
from lightning_modules.anoddpm import AnoDDPM
from lightning_modules.base import AnomalyModule, AnomalyOutput
from lightning_modules.diffusion import DiffusionProcess, denoise
from lightning_modules.nets.smoothing import gaussian_kernel, smooth

MIN_SCALE = 1e-8
MIN_LPIPS_SIZE = 32  # SqueezeNet's pooling needs images of at least this size
MASK_SCOPES = ("image", "batch")


def likely_anomaly_mask(residual: Tensor, percentile: float = 95.0, quantile: float = 0.95, dilation: int = 1,
                        scope: Literal["image", "batch"] = "image", saliency: Tensor | None = None) -> Tensor:
    """Binary mask [B,1,H,W] of pixels whose residual ratio r / P_percentile(r) (per image; clipped to [0, 1] and
    multiplied by ``saliency`` when one is given, GenAI's LPIPS map) exceeds its ``quantile`` (per image or over
    the batch), dilated ``dilation`` times by a 3x3 square."""
    if scope not in MASK_SCOPES:
        raise ValueError(f"unknown mask scope {scope!r}; use one of {MASK_SCOPES}")
    residual = residual.float()
    scale = torch.quantile(residual.flatten(1), percentile / 100.0, dim=1).clamp_min(MIN_SCALE)
    ratio = residual / scale.view(-1, 1, 1, 1)
    if saliency is not None:
        ratio = ratio.clamp(0.0, 1.0) * saliency.float()
    if scope == "image":
        threshold = torch.quantile(ratio.flatten(1), quantile, dim=1).view(-1, 1, 1, 1)
    else:
        threshold = torch.quantile(ratio.flatten(), quantile)
    mask = (ratio > threshold).float()
    for _ in range(dilation):
        mask = F.max_pool2d(mask, kernel_size=3, stride=1, padding=1)
    return mask


def repaint(process: DiffusionProcess, denoiser: nn.Module, known: Tensor, mask: Tensor, start: Tensor, level: int,
            resamples: int, generator: torch.Generator | None = None) -> Tensor:
    """Inpaint ``mask`` (1 = regenerate) of ``known`` (model space) by RePaint resampling (Lugmayr et al., 2022),
    starting from ``start`` noised to ``level``. Outside the mask the result equals ``known`` exactly."""
    noise = process.noise_like
    x_t = process.q_sample(start, level, noise(start, generator))
    for t in process.grid(level):
        previous = process.previous(t)
        rounds = resamples if previous >= 0 else 1  # the step to the clean image has nothing to resample
        for round_index in range(rounds):
            context = process.q_sample(known, previous, noise(known, generator))
            generated = process.step(denoise(denoiser, x_t, t), t, x_t, generator)
            x_previous = mask * generated + (1.0 - mask) * context
            if round_index < rounds - 1:
                x_t = process.jump(x_previous, previous, t, noise(x_previous, generator))
        x_t = x_previous
    return x_t


class AutoDDPM(AnomalyModule):
    """Mask, stitch and re-sample with the weights of the ``weights_from`` job (an :class:`AnoDDPM`)."""

    requires_training = False

    def __init__(
        self,
        weights_from: str = "anoddpm",
        t_recon: int = 300,
        t_inpaint: int = 50,
        resamples: int = 5,
        residual_percentile: float = 95.0,
        mask_quantile: float = 0.95,
        dilation: int = 1,
        mask_scope: Literal["image", "batch"] = "image",
        sampler: Literal["ddpm", "ddim"] | None = None,
        inference_steps: int | None = None,
        lpips: bool = True,
        smoothing_sigma: float = 2.0,
        image_size: int = 128,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if resamples < 1:
            raise ValueError(f"resamples={resamples}: need at least one round per step")
        if not 0.0 < residual_percentile <= 100.0 or not 0.0 < mask_quantile < 1.0:
            raise ValueError(f"residual_percentile={residual_percentile} must lie in (0, 100] and "
                             f"mask_quantile={mask_quantile} in (0, 1)")
        if dilation < 0:
            raise ValueError(f"dilation={dilation} must be >= 0")
        if mask_scope not in MASK_SCOPES:
            raise ValueError(f"unknown mask_scope {mask_scope!r}; use one of {MASK_SCOPES}")
        self.diffusion: AnoDDPM | None = None
        self.saliency: LPIPS | None = None
        size = 2 * math.ceil(4 * smoothing_sigma) + 1  # scipy's gaussian_filter truncates at 4 sigma
        self.register_buffer("smoothing", gaussian_kernel(size, smoothing_sigma), persistent=False)

    @classmethod
    def weights_from(cls, init_args: dict[str, Any]) -> str | None:
        return init_args.get("weights_from", "anoddpm")

    def load_pretrained(self, checkpoint: str) -> None:
        try:
            diffusion = AnoDDPM.load_from_checkpoint(checkpoint, map_location="cpu")
        except (TypeError, KeyError, RuntimeError) as error:
            raise ValueError(f"{checkpoint}: AutoDDPM needs the checkpoint of an AnoDDPM model "
                             f"(weights_from={self.hparams.weights_from!r}): {error}") from error
        size, channels = diffusion.hparams.image_size, diffusion.hparams.in_channels
        if (size, channels) != (self.hparams.image_size, self.hparams.in_channels):
            raise ValueError(f"{checkpoint}: the AnoDDPM model was trained on {channels} x {size} px images, this "
                             f"dataset has {self.hparams.in_channels} x {self.hparams.image_size} px")
        if self.hparams.sampler is not None:
            diffusion.use_sampler(self.hparams.sampler, self.hparams.inference_steps)
        for level in (self.hparams.t_recon, self.hparams.t_inpaint):
            diffusion.process.grid(level)  # a level outside the model's chain is an error now, not at test time
        self.diffusion = diffusion.eval()
        if self.hparams.lpips and self.hparams.image_size < MIN_LPIPS_SIZE:
            rank_zero_warn(f"AutoDDPM runs without its LPIPS saliency factor: {self.hparams.image_size} px images are "
                           f"too small for SqueezeNet (at least {MIN_LPIPS_SIZE} px)")
        elif self.hparams.lpips:
            self.saliency, reason = load_lpips("squeeze")
            if self.saliency is None:
                rank_zero_warn(f"AutoDDPM runs without its LPIPS saliency factor: {reason}")

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        if self.diffusion is None:
            raise RuntimeError("AutoDDPM has no diffusion model: the runner loads the weights of its weights_from "
                               "job with load_pretrained(checkpoint) before evaluation")
        model, hp = self.diffusion, self.hparams
        image = image.float()
        reconstruction = model.reconstruct(image, hp.t_recon)
        residual = (image - reconstruction).abs().mean(dim=1, keepdim=True)
        saliency = None
        if self.saliency is not None:
            with torch.autocast(image.device.type, enabled=False):
                saliency = self.saliency(image, reconstruction, normalize=True, spatial=True)
        mask = likely_anomaly_mask(residual, hp.residual_percentile, hp.mask_quantile, hp.dilation, hp.mask_scope,
                                   saliency)
        inpainted = repaint(model.process, model.unet, model.to_model_space(image), mask,
                            model.to_model_space(reconstruction), hp.t_inpaint, hp.resamples)
        inpainted = model.to_image_space(inpainted)
        weighted = residual if saliency is None else residual * smooth(saliency, self.smoothing)
        anomaly_map = weighted * (image - inpainted).abs().mean(dim=1, keepdim=True)
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map), inpainted)
