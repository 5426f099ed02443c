"""What the GAN methods share: manual optimisation over a schedule of training stages counted in iterations, the
[-1, 1] model space, the generator's noise prior and sampling (:class:`~lightning_modules.base.GenerativeModel`),
the Wasserstein gradient penalty and AnoGAN's latent mapping.

Stages are counted in *iterations* (training batches), kept in the ``iteration`` buffer so that they travel with
the weights and a resumed run continues in the stage where it stopped. ``fit`` ends when the schedule is done: the
modules set ``trainer_overrides = {"max_epochs": -1}`` and stop the trainer themselves, so the trainer profile's
``max_epochs`` does not cut a stage short.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_modules.base import AnomalyModule, AnomalyOutput


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


class GANModule(AnomalyModule):
    """Base of the GAN methods (manual optimisation, see the module docstring).

    Subclasses build ``self.generator`` (noise [B, z_dim] -> [-1, 1] images), set ``self.z_dim``, define the stage
    schedule (:meth:`stages`) and train one batch of the current stage in :meth:`train_stage`.
    """

    trainer_overrides: ClassVar[dict[str, Any]] = {"max_epochs": -1}
    partial_updates: ClassVar[bool] = True
    generator: nn.Module
    z_dim: int

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    # ---- schedule ---------------------------------------------------------------------------------------------
    @abstractmethod
    def stages(self) -> dict[str, int]:
        """Stage name -> number of iterations (training batches), in training order."""

    @abstractmethod
    def train_stage(self, stage: str, image: Tensor) -> None:
        """One training iteration of ``stage`` on a batch in model space."""

    def stage_at(self, iteration: int) -> str | None:
        """The stage that iteration ``iteration`` belongs to (``None`` once the schedule is done)."""
        end = 0
        for name, length in self.stages().items():
            end += length
            if iteration < end:
                return name
        return None

    @property
    def stage(self) -> str | None:
        return self.stage_at(int(self.iteration))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        stage = self.stage
        if stage is not None:
            self.train_stage(stage, self.prepare_batch(batch["image"]))
            self.iteration += 1
        if self.stage is None:
            self.trainer.should_stop = True

    def on_train_start(self) -> None:
        """Warn when the Trainer's epoch limit would end ``fit`` before the schedule (the NormBench runner sets
        ``max_epochs: -1`` through ``trainer_overrides``; a hand-built Trainer may not)."""
        max_epochs, batches = self.trainer.max_epochs, self.trainer.num_training_batches
        remaining = sum(self.stages().values()) - int(self.iteration)
        limited = max_epochs is not None and max_epochs >= 0 and math.isfinite(batches)
        if limited and (max_epochs - self.trainer.current_epoch) * batches < remaining:
            rank_zero_warn(f"{type(self).__name__}: max_epochs={max_epochs} x {batches} batches ends fit before "
                           f"the {remaining} remaining iterations of its schedule {self.stages()}; use "
                           "max_epochs=-1 (the schedule stops fit)")

    def prepare_batch(self, image: Tensor) -> Tensor:
        """Training images in model space (subclasses add augmentation)."""
        return to_model_space(image)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> AnomalyOutput | None:
        """During ``fit`` only :meth:`fit_validation` (the anomaly maps of a GAN can be expensive, e.g. AnoGAN's
        latent search); ``trainer.validate`` (the healthy calibration) scores as every method does."""
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.fit_validation(batch)
            return None
        return super().validation_step(batch, batch_idx)

    def fit_validation(self, batch: dict[str, Any]) -> None:
        """Validation work during ``fit`` (nothing by default)."""

    # ---- sampling (GenerativeModel) -----------------------------------------------------------------------------
    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.z_dim, generator=generator)

    def generate(self, noise: Tensor) -> Tensor:
        return to_image_space(self.generator(noise.to(self.device)).float())

    # ---- shared training pieces ---------------------------------------------------------------------------------
    def noise_like(self, image: Tensor) -> Tensor:
        return torch.randn(image.shape[0], self.z_dim, device=image.device)

    def update(self, optimizer: Any, loss: Tensor) -> None:
        """One manual update of ``optimizer`` on ``loss``; compute the loss inside ``self.toggled_optimizer``, so
        that only that optimizer's parameters get gradients."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def log_train(self, values: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{k}": v.detach().float() for k, v in values.items()}, on_step=True, on_epoch=False,
                      batch_size=batch_size)
