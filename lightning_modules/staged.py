"""Methods trained by a schedule of stages counted in iterations, with manual optimisation (GANs, ASC-Net).

Stages are counted in *iterations* (training batches), kept in the ``iteration`` buffer so that they travel with
the weights and a resumed run continues in the stage where it stopped. ``fit`` ends when the schedule is done: the
modules set ``trainer_overrides = {"max_epochs": -1}`` and stop the trainer themselves, so the trainer profile's
``max_epochs`` does not cut a stage short.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from lightning_modules.base import AnomalyModule, AnomalyOutput


class StagedModule(AnomalyModule):
    """Base of the methods trained by a stage schedule (see the module docstring): subclasses define the schedule
    (:meth:`stages`) and train one batch of the current stage in :meth:`train_stage`, with their optimisers
    (``self.optimizers()``), :meth:`update` inside ``self.toggled_optimizer`` and :meth:`log_train`."""

    trainer_overrides: ClassVar[dict[str, Any]] = {"max_epochs": -1}
    partial_updates: ClassVar[bool] = True

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
        """The training images as :meth:`train_stage` receives them (unchanged by default)."""
        return image

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> AnomalyOutput | None:
        """During ``fit`` only :meth:`fit_validation` (anomaly maps can be expensive, e.g. AnoGAN's latent search);
        ``trainer.validate`` (the healthy calibration) scores as every method does."""
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.fit_validation(batch)
            return None
        return super().validation_step(batch, batch_idx)

    def fit_validation(self, batch: dict[str, Any]) -> None:
        """Validation work during ``fit`` (nothing by default)."""

    # ---- shared training pieces ---------------------------------------------------------------------------------
    def update(self, optimizer: Any, loss: Tensor) -> None:
        """One manual update of ``optimizer`` on ``loss``; compute the loss inside ``self.toggled_optimizer``, so
        that only that optimizer's parameters get gradients."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def log_train(self, values: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{k}": v.detach().float() for k, v in values.items()}, on_step=True, on_epoch=False,
                      batch_size=batch_size)
