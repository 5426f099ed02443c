"""The method contract: every NormBench method is an ``AnomalyModule``.

A method implements training (``training_step`` + ``configure_optimizers``, or manual optimisation) and one
inference function, :meth:`AnomalyModule.predict_anomaly`. The base class owns the validation and test steps:
they call ``predict_anomaly`` and return the :class:`AnomalyOutput`, which the harness's callbacks (evaluation,
image grids) consume. Nothing here knows about metrics or files.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor


@dataclass
class AnomalyOutput:
    """What a method returns for a batch of images [B,C,H,W].

    ``anomaly_map`` [B,1,H,W] >= 0 (higher = more anomalous), ``anomaly_score`` [B], and the
    ``reconstruction`` [B,C,H,W] for methods that restore a healthy image (``None`` otherwise).
    """

    anomaly_map: Tensor
    anomaly_score: Tensor
    reconstruction: Tensor | None = None

    def detach(self) -> AnomalyOutput:
        rec = None if self.reconstruction is None else self.reconstruction.detach()
        return AnomalyOutput(self.anomaly_map.detach(), self.anomaly_score.detach(), rec)


class AnomalyModule(pl.LightningModule):
    """Base class of all methods.

    Class attributes a method may override:
        requires_training: ``False`` for non-learned baselines (the runner skips ``fit``).
        needs_input_gradients: ``True`` when ``predict_anomaly`` differentiates w.r.t. its input (gradient maps,
            latent optimisation); the runner then builds the Trainer with ``inference_mode=False`` and the base
            class enables autograd in validation / test.
        trainer_defaults: Trainer arguments this method needs (merged under the user's trainer profile).
    """

    requires_training: ClassVar[bool] = True
    needs_input_gradients: ClassVar[bool] = False
    trainer_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # multi-device evaluation gives each rank whole subjects, so a rank may have no batch of a small test set
        self.allow_zero_length_dataloader_with_multiple_devices = True

    @abstractmethod
    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        """Anomaly map, score and optional reconstruction for ``image`` [B,C,H,W] in [0, 1]."""

    def validation_loss(self, batch: dict[str, Any]) -> Tensor | None:
        """Loss on healthy validation data for early stopping and checkpoint selection (``None``: not defined)."""
        return None

    @staticmethod
    def reduce_map(anomaly_map: Tensor) -> Tensor:
        """Default image score: the mean of the map (MedIAnomaly / GenAI convention)."""
        return anomaly_map.flatten(1).mean(dim=1)

    def _predict(self, batch: dict[str, Any]) -> AnomalyOutput:
        with torch.set_grad_enabled(self.needs_input_gradients):
            output = self.predict_anomaly(batch["image"])
        return output.detach()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> AnomalyOutput:
        loss = self.validation_loss(batch)
        if loss is not None:
            self.log("val/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        return self._predict(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        return self._predict(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        return self._predict(batch)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
