"""What the GAN methods share: the stage schedule of :mod:`lightning_modules.staged`, the [-1, 1] model space, the
generator's noise prior and sampling (:class:`~lightning_modules.base.GenerativeModel`), the Wasserstein gradient
penalty and AnoGAN's latent mapping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_modules.staged import StagedModule


def to_model_space(image: Tensor) -> Tensor:
    """[0, 1] images (the data contract) -> [-1, 1] (the generators' tanh range)."""
    return image * 2.0 - 1.0


def to_image_space(x: Tensor) -> Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def random_hflip(image: Tensor) -> Tensor:
    """Each image flipped left-right with probability 0.5 (the f-AnoGAN training augmentation)."""
    flip = torch.rand(image.shape[0], device=image.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), image.flip(-1), image)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP's penalty mean_b (||grad_x D(x_hat_b)||_2 - 1)^2 at x_hat = real + alpha (fake - real), alpha ~ U(0, 1)
    per sample; computed in float32 with autocast off (the squared-norm gradient underflows in half precision) and
    with ``create_graph`` so that the critic's update differentiates through it."""
    with torch.autocast(device_type=real.device.type, enabled=False):
        real, fake = real.detach().float(), fake.detach().float()
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
        mixed = (real + alpha * (fake - real)).requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
        return ((gradient.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


@dataclass
class Mapping:
    """Result of AnoGAN's latent mapping for a batch: the final z, the generated image and the per-image losses
    (``history`` [steps + 1, B]: the loss before each update and after the last one)."""

    z: Tensor
    generated: Tensor
    residual: Tensor
    feature: Tensor
    loss: Tensor
    history: Tensor


def anogan_mapping(image: Tensor, generator: nn.Module, features: Any, z: Tensor, steps: int = 500,
                   weight: float = 0.1, lr: float = 1e-2) -> Mapping:
    """Search z with G(z) ~ ``image`` (model space) through a frozen generator and discriminator (Schlegl et al.,
    IPMI 2017): minimise L(z) = (1 - weight) * sum|x - G(z)| + weight * sum|f(x) - f(G(z))| per image with Adam.

    Every image has its own z and Adam works element-wise, so the batched search equals one search per image.
    ``features`` is the discriminator's feature-matching layer; only ``z`` is updated (callers keep G and D in eval
    mode, so BatchNorm uses its running statistics)."""
    z = z.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=lr)
    with torch.no_grad():
        target = features(image)
    history = []
    for step in range(steps + 1):
        generated = generator(z)
        residual = (image - generated).abs().flatten(1).sum(dim=1)
        feature = (target - features(generated)).abs().flatten(1).sum(dim=1)
        loss = (1.0 - weight) * residual + weight * feature
        history.append(loss.detach())
        if step == steps:
            break
        (z.grad,) = torch.autograd.grad(loss.sum(), z)  # no gradient reaches G's or D's parameters
        optimiser.step()
    return Mapping(z.detach(), generated.detach(), residual.detach(), feature.detach(), loss.detach(),
                   torch.stack(history))


class GANModule(StagedModule):
    """Base of the GAN methods: a :class:`~lightning_modules.staged.StagedModule` whose training images are in
    [-1, 1] and whose generator samples images (a :class:`~lightning_modules.base.GenerativeModel`).

    Subclasses build ``self.generator`` (noise [B, z_dim] -> [-1, 1] images), set ``self.z_dim``, define the stage
    schedule (:meth:`stages`) and train one batch of the current stage in :meth:`train_stage`.
    """

    generator: nn.Module
    z_dim: int

    def prepare_batch(self, image: Tensor) -> Tensor:
        """Training images in model space (subclasses add augmentation)."""
        return to_model_space(image)

    # ---- sampling (GenerativeModel) -----------------------------------------------------------------------------
    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.z_dim, generator=generator)

    def generate(self, noise: Tensor) -> Tensor:
        return to_image_space(self.generator(noise.to(self.device)).float())

    # ---- shared training pieces ---------------------------------------------------------------------------------
    def noise_like(self, image: Tensor) -> Tensor:
        return torch.randn(image.shape[0], self.z_dim, device=image.device)
