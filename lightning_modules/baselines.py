"""Non-learned baselines that keep every leaderboard honest.

* ``RandomBaseline``: i.i.d. uniform noise as anomaly map and score: the chance level of every metric.
* ``IntensityBaseline``: the (normalised) image intensity itself as anomaly map. Hyperintense lesions (MS in FLAIR,
  enhancing tumour rims) are found surprisingly well by it (Meissen et al., "Challenging current semi-supervised
  anomaly segmentation methods for brain MRI", 2021); a method that cannot beat it has learnt little.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_modules.base import AnomalyModule, AnomalyOutput


class RandomBaseline(AnomalyModule):
    """Uniform random map and score, reproducible from ``seed`` (independent of batch composition per call order)."""

    requires_training = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._generator = torch.Generator().manual_seed(seed)

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        b, _, h, w = image.shape
        anomaly_map = torch.rand((b, 1, h, w), generator=self._generator).to(image.device)
        score = torch.rand((b,), generator=self._generator).to(image.device)
        return AnomalyOutput(anomaly_map, score, None)


class IntensityBaseline(AnomalyModule):
    """Map = image intensity (``hyper``) or its complement (``hypo``), averaged over channels.

    Score = the ``score_quantile`` of the map over the image (default 0.99: "is there a bright spot"), since
    the mean intensity of a slice mostly measures how much brain it contains.
    """

    requires_training = False

    def __init__(self, polarity: Literal["hyper", "hypo"] = "hyper", score_quantile: float = 0.99) -> None:
        super().__init__()
        if polarity not in ("hyper", "hypo"):
            raise ValueError(f"unknown polarity {polarity!r}; use 'hyper' or 'hypo'")
        if not 0.0 <= score_quantile <= 1.0:
            raise ValueError(f"score_quantile must be in [0, 1], got {score_quantile}")
        self.save_hyperparameters()

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        intensity = image.mean(dim=1, keepdim=True)
        anomaly_map = intensity if self.hparams.polarity == "hyper" else 1.0 - intensity
        score = torch.quantile(anomaly_map.flatten(1).float(), self.hparams.score_quantile, dim=1)
        return AnomalyOutput(anomaly_map, score, None)
