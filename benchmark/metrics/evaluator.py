"""Per-test-set metrics from (batch, AnomalyOutput) pairs.

Pixel metrics are computed over ``roi`` pixels only (background excluded: ``bg_included = False``), with the
lesion mask as target. Sample metrics rank ``anomaly_score`` against the slice ``label``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmark.metrics.ranking import BinaryRanking
from lightning_modules.base import AnomalyOutput


class MethodOutputError(RuntimeError):
    """A method returned an anomaly map or score that violates the output contract."""


def check_output(output: Any, batch: dict[str, Any], method: str) -> None:
    """Reject outputs that would silently corrupt metrics: wrong type or shape, NaN/Inf, negative maps."""
    if not isinstance(output, AnomalyOutput):
        raise MethodOutputError(
            f"method {method}: predict_anomaly must return AnomalyOutput, got {type(output).__name__}")
    b, _, h, w = batch["image"].shape
    if tuple(output.anomaly_map.shape) != (b, 1, h, w):
        raise MethodOutputError(f"method {method}: anomaly_map has shape {tuple(output.anomaly_map.shape)}, "
                                f"expected {(b, 1, h, w)}")
    if tuple(output.anomaly_score.shape) != (b,):
        raise MethodOutputError(f"method {method}: anomaly_score has shape {tuple(output.anomaly_score.shape)}, "
                                f"expected {(b,)}")
    for name, value in (("anomaly_map", output.anomaly_map), ("anomaly_score", output.anomaly_score)):
        if not torch.isfinite(value).all():
            raise MethodOutputError(f"method {method}: {name} contains NaN/Inf values "
                                    f"({int((~torch.isfinite(value)).sum())} of {value.numel()})")
    if (output.anomaly_map < 0).any():
        minimum = float(output.anomaly_map.min())
        raise MethodOutputError(f"method {method}: anomaly_map has negative values (min {minimum}); maps must be >= 0")


class DetectionMetrics(nn.Module):
    """Pixel AUROC / AUPRC over roi pixels and sample AUROC / AUPRC of one test set."""

    def __init__(self) -> None:
        super().__init__()
        self.pixel = BinaryRanking()
        self.sample = BinaryRanking()

    def update(self, batch: dict[str, Any], output: AnomalyOutput) -> None:
        roi = batch["roi"] > 0.5
        anomaly_map = output.anomaly_map.to(roi.device)
        self.pixel.update(anomaly_map[roi], batch["mask"][roi] > 0.5)
        self.sample.update(output.anomaly_score.to(roi.device), batch["label"])

    def compute(self) -> dict[str, Any]:
        pixel, sample = self.pixel.compute(), self.sample.compute()
        notes = {f"{kind}_{metric}": info["reason"]
                 for kind, info in (("pixel", pixel), ("sample", sample)) if info["reason"]
                 for metric in ("auroc", "auprc")}
        return {
            "pixel_auroc": pixel["auroc"],
            "pixel_auprc": pixel["auprc"],
            "sample_auroc": sample["auroc"],
            "sample_auprc": sample["auprc"],
            "n_slices": sample["n_positive"] + sample["n_negative"],
            "n_anomalous_slices": sample["n_positive"],
            "n_roi_pixels": pixel["n_positive"] + pixel["n_negative"],
            "n_lesion_pixels": pixel["n_positive"],
            "notes": notes,
        }
