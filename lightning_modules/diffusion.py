"""The denoising diffusion process shared by AnoDDPM and AutoDDPM, on MONAI's schedulers.

Indexing follows MONAI (and GenAI_UAD): ``x_t`` for t = 0 .. T-1 is the image noised with
``alphas_cumprod[t]`` (t = 0 is already slightly noisy); a reverse step from t lands on the *previous grid point*
``t - stride``, and a negative previous point is the clean image (alpha_bar = 1).

* ``sampler="ddpm"``: ancestral sampling through every step (stride 1), the faithful default: posterior mean of
  MONAI's ``DDPMScheduler`` with the fixed-small variance, x0 clipped to [-1, 1]; the variance noise is of the
  configured kind (Gaussian or simplex, as in AnoDDPM's DDPM-S).
* ``sampler="ddim"``: MONAI's ``DDIMScheduler`` with eta = 0 (deterministic) on a uniform grid of stride
  ``T // inference_steps`` starting at the requested noise level (a CPU-profile speed option; a deviation).
  MONAI 1.6's ``set_timesteps`` spaces its own grid by ``linspace`` while its ``step`` always jumps
  ``T // inference_steps``; walking our own uniform grid keeps the two consistent.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from lightning_modules.nets.simplex import simplex_noise

NOISE_KINDS = ("gaussian", "simplex")
SAMPLERS = ("ddpm", "ddim")


class DiffusionProcess(nn.Module):
    """Forward noising q(x_t | x_0), the reverse-step rule of the chosen sampler and the noise (Gaussian or
    multi-octave simplex). Holds no weights; the denoiser (epsilon predictor) is passed to :meth:`reverse`."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2,
                 noise: Literal["gaussian", "simplex"] = "gaussian", simplex_octaves: int = 6,
                 simplex_persistence: float = 0.8, simplex_frequency: float = 64.0,
                 sampler: Literal["ddpm", "ddim"] = "ddpm", inference_steps: int | None = None,
                 clip_denoised: bool = True) -> None:
        super().__init__()
        if noise not in NOISE_KINDS:
            raise ValueError(f"unknown noise {noise!r}; use one of {NOISE_KINDS}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
        self.timesteps, self.noise, self.sampler = timesteps, noise, sampler
        self.simplex = {"octaves": simplex_octaves, "persistence": simplex_persistence,
                        "frequency": simplex_frequency}
        schedule = {"num_train_timesteps": timesteps, "schedule": "linear_beta", "beta_start": beta_start,
                    "beta_end": beta_end, "clip_sample": clip_denoised}
        self.ddpm = DDPMScheduler(**schedule)  # noising for training and the faithful sampler
        if sampler == "ddpm":
            if inference_steps not in (None, timesteps):
                raise ValueError(f"inference_steps={inference_steps}: the ddpm sampler walks all {timesteps} steps; "
                                 "use sampler='ddim' for fewer steps")
            self.stride = 1
        else:
            if inference_steps is None or not 1 <= inference_steps <= timesteps:
                raise ValueError(f"inference_steps={inference_steps}: the ddim sampler needs a number of steps in "
                                 f"[1, {timesteps}] (over the whole chain; the stride is timesteps // steps)")
            self.ddim = DDIMScheduler(**schedule)
            self.ddim.set_timesteps(inference_steps)
            self.stride = timesteps // inference_steps
        # float64 copy for the jumps below (MONAI's add_noise recasts its own table to the samples' dtype)
        self.register_buffer("alpha_bar", self.ddpm.alphas_cumprod.clone().double(), persistent=False)

    # ---- noise -------------------------------------------------------------------------------------------------
    def noise_like(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noise of ``x``'s shape, dtype and device: N(0, I) or simplex noise standardised per image."""
        if self.noise == "simplex":
            return simplex_noise(x.shape, generator=generator, device=x.device, dtype=x.dtype, normalise=True,
                                 **self.simplex)
        if generator is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    # ---- forward process ----------------------------------------------------------------------------------------
    def bar(self, t: int) -> Tensor:
        """alpha_bar at step ``t`` (1 for t < 0: the clean image)."""
        return self.alpha_bar[t] if t >= 0 else self.alpha_bar.new_ones(())

    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (``t``: one step for all, or [B]); x0 at t < 0."""
        if isinstance(t, int):
            if t < 0:
                return x0
            t = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return self.ddpm.add_noise(x0.float(), noise.float(), t).to(x0.dtype)

    def jump(self, x_s: Tensor, s: int, t: int, noise: Tensor) -> Tensor:
        """Re-noise from step s to a later step t > s: q(x_t | x_s) = N(sqrt(ab_t / ab_s) x_s, (1 - ab_t / ab_s) I)."""
        ratio = (self.bar(t) / self.bar(s)).to(x_s.dtype)
        return ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise

    # ---- reverse process ----------------------------------------------------------------------------------------
    def grid(self, start: int) -> list[int]:
        """The reverse steps from noise level ``start`` down to the clean image."""
        if not 0 <= start < self.timesteps:
            raise ValueError(f"noise level {start} outside [0, {self.timesteps - 1}]")
        return list(range(start, -1, -self.stride))

    def previous(self, t: int) -> int:
        """The grid point a reverse step from ``t`` lands on (negative: the clean image)."""
        return t - self.stride

    def step(self, eps: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One reverse step x_t -> x_{previous(t)} given the predicted noise ``eps`` (float32 arithmetic)."""
        eps, x_t = eps.float(), x_t.float()
        if self.sampler == "ddim":
            return self.ddim.step(eps, t, x_t, eta=0.0)[0]
        _, x0 = self.ddpm.step(eps, t, x_t)  # x0 prediction, clipped; its Gaussian draw is discarded
        mean = self.ddpm._get_mean(t, x0, x_t)
        if t == 0:
            return mean
        return mean + self.ddpm._get_variance(t).sqrt() * self.noise_like(x_t, generator)

    def reverse(self, denoiser: nn.Module, x_t: Tensor, start: int, generator: torch.Generator | None = None
                ) -> Tensor:
        """Run the reverse chain from ``x_t`` at noise level ``start`` to the clean image."""
        for t in self.grid(start):
            x_t = self.step(denoise(denoiser, x_t, t), t, x_t, generator)
        return x_t


def denoise(denoiser: nn.Module, x_t: Tensor, t: int) -> Tensor:
    """The denoiser's noise prediction at step ``t`` for every image of ``x_t`` (float32 output)."""
    steps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    return denoiser(x_t, steps).float()
