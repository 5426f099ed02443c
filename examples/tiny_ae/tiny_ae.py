"""A user's own method, outside the harness: a tiny convolutional autoencoder.

Nothing in NormBench is edited to add it. The class subclasses ``AnomalyModule``, implements training and
``predict_anomaly``, and ``tiny_ae.yaml`` points at it by ``class_path``; put this folder on ``PYTHONPATH`` (or
install your package) and list the YAML in a sweep::

    PYTHONPATH=examples/tiny_ae python run_benchmark.py sweep --config default \\
        "methods=[random,intensity,examples/tiny_ae/tiny_ae.yaml]"
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn

from lightning_modules.base import AnomalyModule, AnomalyOutput


class TinyConvAE(AnomalyModule):
    """Three strided convolutions down, three transposed convolutions up; map = |x - x_hat|, score = its mean.

    ``image_size`` and ``in_channels`` are filled in by the harness from the dataset.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, width: int = 16, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
        channels = [in_channels, width, 2 * width, 4 * width]
        down = [layer for c_in, c_out in pairwise(channels)
                for layer in (nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2))]
        up = [layer for c_in, c_out in pairwise(channels[::-1])
              for layer in (nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2))]
        self.net = nn.Sequential(*down, *up[:-1], nn.Sigmoid())  # images are in [0, 1]

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = nn.functional.mse_loss(self(batch["image"]), batch["image"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_loss(self, batch: dict[str, Any]) -> Tensor:
        return nn.functional.mse_loss(self(batch["image"]), batch["image"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        reconstruction = self(image)
        anomaly_map = (image - reconstruction).abs().mean(dim=1, keepdim=True)
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map), reconstruction)
