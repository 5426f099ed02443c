"""AnoDDPM: anomaly detection by partial diffusion (Wyatt, Leach, Schmon & Willcocks, CVPR-W 2022).

Faithful to the GenAI_UAD port (Bercea et al., Nature Communications 2025; ``model_zoo/ddpm.py``,
``configs/anoddpm.yaml``), which builds on MONAI's generative networks:

* network: MONAI ``DiffusionModelUNet``, channels (128, 256, 256), attention (False, True, True), one residual block
  per level, 256-channel attention heads, GroupNorm with 32 groups;
* diffusion: T = 1000, linear betas 1e-4 -> 2e-2, epsilon prediction, fixed-small variance, predicted x0 clipped to
  [-1, 1] while the data stay in [0, 1] (``data_range="unit"``; ``"symmetric"`` maps them to [-1, 1] instead, the
  paper's own scaling being [UNVERIFIED]);
* training: L2 between the predicted and the true noise at t ~ U{0..T-1}, Adam 1e-4;
* noise: ``gaussian`` (DDPM-G) or ``simplex`` (DDPM-S: 6 octaves, persistence 0.8, first-octave wavelength 64 px),
  used both for noising and for the reverse-step variance;
* anomaly detection: noise the input to ``t_recon`` = 250 and run the reverse chain back (251 network calls with the
  faithful ``ddpm`` sampler); map |x - x_hat|, score its mean (GenAI's ``get_anomaly`` default level is 250).

Deviations, each a config choice (faithful values in ``configs/methods/anoddpm.yaml``):

* ``sampler="ddim"`` with ``inference_steps`` (deterministic DDIM on a coarser grid) for the CPU profile;
* simplex noise is classic simplex noise computed in torch, standardised per image, one pattern per image
  (the original: OpenSimplex via numba, raw amplitude, one pattern per batch);
* ``val/loss`` (checkpoint selection and early stopping) is the noise-prediction loss on healthy validation images
  at fixed noise and timesteps (GenAI validates the reconstruction error at the recon level, 250 network calls per
  image, which a CPU cannot afford every epoch);
* the reconstruction is clamped to [0, 1] (GenAI's AnoDDPM leaves it in the [-1, 1] clip range; AutoDDPM clamps);
* ``max_training_steps`` ends training after that many batches (CPU profile); GenAI trains 3000 epochs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor

from lightning_modules.ae import residual_map
from lightning_modules.base import AnomalyModule, AnomalyOutput
from lightning_modules.diffusion import DiffusionProcess

VALIDATION_SEED = 2109  # fixed noise and timesteps for val/loss (GenAI's seed), so that epochs are comparable


class AnoDDPM(AnomalyModule):
    """Denoising diffusion model scoring anomalies by partial diffusion; also a
    :class:`~lightning_modules.base.GenerativeModel` (full reverse chain from noise)."""

    predict_during_fit = False  # a reverse chain per validation image every epoch is too slow: val/loss only

    def __init__(
        self,
        image_size: int = 128,
        in_channels: int = 1,
        channels: tuple[int, ...] = (128, 256, 256),
        attention_levels: tuple[bool, ...] = (False, True, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 256,
        norm_num_groups: int = 32,
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        noise: Literal["gaussian", "simplex"] = "gaussian",
        simplex_octaves: int = 6,
        simplex_persistence: float = 0.8,
        simplex_frequency: float = 64.0,
        t_recon: int = 250,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        inference_steps: int | None = None,
        data_range: Literal["unit", "symmetric"] = "unit",
        clip_denoised: bool = True,
        lr: float = 1e-4,
        max_training_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if data_range not in ("unit", "symmetric"):
            raise ValueError(f"unknown data_range {data_range!r}; use 'unit' (GenAI: [0, 1]) or 'symmetric' ([-1, 1])")
        if not 0 <= t_recon < timesteps:
            raise ValueError(f"t_recon={t_recon} must lie in [0, timesteps - 1 = {timesteps - 1}]")
        if len(channels) != len(attention_levels):
            raise ValueError(f"channels {tuple(channels)} and attention_levels {tuple(attention_levels)} need one "
                             "entry per level")
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=in_channels, channels=tuple(channels),
            attention_levels=tuple(attention_levels), num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels, norm_num_groups=norm_num_groups)
        self.use_sampler(sampler, inference_steps)

    def use_sampler(self, sampler: Literal["ddpm", "ddim"], inference_steps: int | None = None) -> None:
        """(Re)build the diffusion process with ``sampler`` (e.g. a model trained on a GPU, sampled by DDIM on CPU)."""
        hp = self.hparams
        hp.sampler, hp.inference_steps = sampler, inference_steps
        self.process = DiffusionProcess(hp.timesteps, hp.beta_start, hp.beta_end, hp.noise, hp.simplex_octaves,
                                        hp.simplex_persistence, hp.simplex_frequency, sampler, inference_steps,
                                        hp.clip_denoised)

    # ---- data space -------------------------------------------------------------------------------------------
    def to_model_space(self, image: Tensor) -> Tensor:
        return image * 2.0 - 1.0 if self.hparams.data_range == "symmetric" else image

    def to_image_space(self, x: Tensor) -> Tensor:
        x = (x + 1.0) / 2.0 if self.hparams.data_range == "symmetric" else x
        return x.clamp(0.0, 1.0)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Predicted noise for noisy images ``x_t`` at steps ``t`` [B]."""
        return self.unet(x_t, t)

    # ---- training ---------------------------------------------------------------------------------------------
    def noise_prediction_loss(self, image: Tensor, generator: torch.Generator | None = None,
                              t: Tensor | None = None) -> Tensor:
        """E ||eps - eps_theta(x_t, t)||^2 with x_t ~ q(x_t | x_0) (mean over pixels and images)."""
        x0 = self.to_model_space(image)
        if t is None:
            t = torch.randint(0, self.hparams.timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = self.process.noise_like(x0, generator)
        prediction = self(self.process.q_sample(x0, t, noise), t)
        return F.mse_loss(prediction.float(), noise.float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.noise_prediction_loss(batch["image"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        limit = self.hparams.max_training_steps
        if limit is not None and self.trainer.global_step >= limit:
            self.trainer.should_stop = True

    def validation_loss(self, batch: dict[str, Any]) -> Tensor:
        """Noise-prediction loss at fixed noise and evenly spread timesteps (the same draws every epoch)."""
        image = batch["image"]
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        t = torch.linspace(0, self.hparams.timesteps - 1, image.shape[0]).round().long().to(image.device)
        return self.noise_prediction_loss(image, generator, t)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    # ---- inference --------------------------------------------------------------------------------------------
    def reconstruct(self, image: Tensor, level: int, generator: torch.Generator | None = None) -> Tensor:
        """Partial diffusion: noise ``image`` to step ``level`` and denoise it back; [0, 1] images."""
        x0 = self.to_model_space(image.float())
        x_t = self.process.q_sample(x0, level, self.process.noise_like(x0, generator))
        return self.to_image_space(self.process.reverse(self.unet, x_t, level, generator))

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        reconstruction = self.reconstruct(image, self.hparams.t_recon)
        anomaly_map = residual_map(image.float(), reconstruction, "abs")
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map), reconstruction)

    # ---- generation (GenerativeModel) -------------------------------------------------------------------------
    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        size = self.hparams.image_size
        shape = torch.empty(n, self.hparams.in_channels, size, size)
        return self.process.noise_like(shape, generator)

    def generate(self, noise: Tensor) -> Tensor:
        """The full reverse chain from pure noise (the sampler's grid from its top step)."""
        x_t = noise.to(self.device, torch.float32)
        top = self.process.grid(self.hparams.timesteps - 1)[0]
        return self.to_image_space(self.process.reverse(self.unet, x_t, top))

