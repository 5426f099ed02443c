"""Healthy-data calibration: thresholds at fixed pixel false-positive rates, without any lesion label.

The (post-processed) anomaly maps of the healthy validation split, restricted to ``roi``, go into one histogram;
the threshold for a target rate p is the lowest histogram edge whose tail holds at most p of those pixels (the
most sensitive threshold with healthy FPR <= p). This is the harness default of protocols.md §2: healthy
*validation* data, brain mask on, exact tail of the pooled healthy pixel values (equivalent to the GenAI
1000-step sweep up to grid resolution, which here is the bin width of 0.1 %).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from benchmark.metrics.histogram import PixelHistogram
from benchmark.metrics.settings import EvaluationSettings, threshold_name
from benchmark.metrics.volumes import MapStream
from lightning_modules.base import AnomalyOutput


class HealthyCalibration(nn.Module):
    """Accumulates healthy validation maps; :meth:`compute` gives the calibrated thresholds."""

    def __init__(self, settings: EvaluationSettings, slices_per_subject: Mapping[str, int]) -> None:
        super().__init__()
        self.settings = settings
        self.stream = MapStream(settings.postprocessing, slices_per_subject)
        self.histogram = PixelHistogram(1, settings.bins)

    def update(self, batch: dict[str, Any], output: AnomalyOutput) -> None:
        for chunk in self.stream(batch, output.anomaly_map):
            roi = chunk.roi.to(chunk.anomaly_map.device)
            self.histogram.update(chunk.anomaly_map, torch.zeros_like(roi), torch.where(roi, 0, -1))

    def compute(self) -> dict[str, Any]:
        self.stream.finish()
        curves = self.histogram.compute()[0]
        if curves.n_negative == 0:
            raise ValueError("healthy calibration saw no roi pixels: the validation split is empty or has no roi")
        thresholds = {}
        for fpr in self.settings.fpr_targets:
            point = curves.at_bin(curves.bin_at_fpr(fpr))
            thresholds[threshold_name(fpr)] = {"target_fpr": fpr, "threshold": point.threshold,
                                               "achieved_fpr": point.fpr}
        return {"source": "healthy validation split", "pixels": "roi", "n_pixels": curves.n_negative,
                "postprocessing": self.settings.postprocessing.name, "thresholds": thresholds}
