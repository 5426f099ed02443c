"""AE-S: convolutional autoencoder with a spatial bottleneck (Baur et al., MedIA 2021, arXiv 2004.03271).

Faithful to the public reimplementation of the comparative study
(``StefanDenn3r/Unsupervised_Anomaly_Detection_Brain_MRI``: ``models/autoencoder_spatial.py``,
``models/customlayers.py``, ``trainers/AE.py``, ``mains/main_AE_spatial.py``):

* encoder: 5x5 stride-2 convs with ``min(128, 32 * 2**i)`` channels, BatchNorm (TF defaults), LeakyReLU (Keras
  default slope 0.3), down to an ``8 x 8`` spatial bottleneck (no dense layer); dropout 0.2 on the bottleneck
  while training;
* decoder: BN -> ReLU, then 5x5 stride-2 transposed convs with ``max(32, 128 / 2**i)`` channels (+ BN, LeakyReLU),
  then a 1x1 conv with linear output;
* loss: per-image sum of |x - x_hat|, averaged over the batch; Adam lr 1e-4, beta1 0.5, batch 8, early stopping
  after 5 epochs without validation improvement.

Anomaly map: residual ``|x - x_hat|`` (``residual="abs"``, GenAI convention). Baur's evaluation keeps only the
positive residual (x - x_hat)+ for hyperintense FLAIR lesions: ``residual="positive"``. Score: mean of the map.
Deviations: PyTorch pads a stride-2 'same' conv symmetrically (TF pads one more pixel at the bottom/right).
Config choices of the default CPU configuration (``configs/methods/ae.yaml``, faithful values in its comments):
half the channel widths (``base_channels=16``, ``max_channels=64``) and lr 1e-3 at batch 32, so that it trains in
about two minutes on 2 CPU cores; ``faithful_batchnorm=False`` would use PyTorch's BN defaults.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_modules.base import AnomalyModule, AnomalyOutput
from lightning_modules.nets.conv import ConvDecoder, ConvEncoder, num_levels

FAITHFUL_LEVELS_DIVISOR = 16  # 128 px -> 8 x 8 bottleneck: four stride-2 levels, kept at every image size
RESIDUAL_KINDS = ("abs", "positive", "negative")


def residual_map(image: Tensor, reconstruction: Tensor, kind: str) -> Tensor:
    """Channel-mean residual [B,1,H,W]: ``abs`` |x - x_hat|, ``positive`` (x - x_hat)+, ``negative`` (x_hat - x)+."""
    diff = image - reconstruction
    if kind == "abs":
        diff = diff.abs()
    elif kind == "positive":
        diff = diff.clamp_min(0)
    elif kind == "negative":
        diff = (-diff).clamp_min(0)
    else:
        raise ValueError(f"unknown residual kind {kind!r}; use one of {RESIDUAL_KINDS}")
    return diff.mean(dim=1, keepdim=True)


class AutoEncoder(AnomalyModule):
    """AE-S spatial-bottleneck autoencoder; ``image_size`` and ``in_channels`` are linked from the dataset.

    ``bottleneck_resolution`` defaults to ``image_size / 16``: the original's four stride-2 levels (128 -> 8) and its
    compression ratio (bottleneck values / pixels = 1/2 at full width) at any image size.
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        bottleneck_resolution: int | None = None,
        base_channels: int = 32,
        max_channels: int = 128,
        dropout: float = 0.2,
        leaky_slope: float = 0.3,
        faithful_batchnorm: bool = True,
        loss: Literal["l1", "l2"] = "l1",
        residual: Literal["abs", "positive", "negative"] = "abs",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        levels = num_levels(image_size, bottleneck_resolution or image_size // FAITHFUL_LEVELS_DIVISOR)
        self.encoder = ConvEncoder(in_channels, levels, base_channels, max_channels, leaky_slope, faithful_batchnorm)
        self.bottleneck_dropout = nn.Dropout(dropout)
        self.decoder = ConvDecoder(self.encoder.out_channels, in_channels, levels, top_channels=max_channels,
                                   min_channels=base_channels, leaky_slope=leaky_slope,
                                   faithful_batchnorm=faithful_batchnorm)
        if loss not in ("l1", "l2"):
            raise ValueError(f"unknown loss {loss!r}; use 'l1' or 'l2'")
        if residual not in RESIDUAL_KINDS:
            raise ValueError(f"unknown residual kind {residual!r}; use one of {RESIDUAL_KINDS}")

    def forward(self, image: Tensor) -> Tensor:
        return self.decoder(self.bottleneck_dropout(self.encoder(image)))

    def reconstruction_loss(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        """Per-image sum of the element-wise error, averaged over the batch (as in the original)."""
        error = (image - reconstruction).abs() if self.hparams.loss == "l1" else (image - reconstruction) ** 2
        return error.flatten(1).sum(dim=1).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image = batch["image"]
        loss = self.reconstruction_loss(image, self(image))
        self.log("train/loss", loss, prog_bar=True, batch_size=image.shape[0])
        return loss

    def validation_loss(self, batch: dict[str, Any]) -> Tensor:
        image = batch["image"]
        return self.reconstruction_loss(image, self(image))

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        reconstruction = self(image)
        anomaly_map = residual_map(image, reconstruction, self.hparams.residual)
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map), reconstruction)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))
