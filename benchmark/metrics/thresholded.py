"""Confusion counts at fixed thresholds, per subject and per lesion-size stratum (sum-reduced across ranks).

Counting per subject is how volumes are "reassembled" for per-volume metrics without holding them: slices of one
subject may arrive in several batches or on several ranks, and their counts simply add up in the subject's row.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from benchmark.metrics.curves import OperatingPoint

TP, FP, FN, TN = range(4)


def confusion_counts(flags: Tensor, mask: Tensor, roi: Tensor) -> Tensor:
    """``[S,T,4]`` int64 counts (tp, fp, fn, tn) inside ``roi`` of ``flags`` [S,T,H,W] against ``mask`` [S,H,W]."""
    roi, mask = roi[:, None], mask[:, None]
    positive, negative = mask & roi, ~mask & roi
    tp = (flags & positive).sum((2, 3))
    fp = (flags & negative).sum((2, 3))
    fn = positive.sum((2, 3)) - tp
    tn = negative.sum((2, 3)) - fp
    return torch.stack([tp, fp, fn, tn], dim=-1).long()


class ThresholdedCounts(Metric):
    """Counts at ``n_thresholds`` thresholds for every subject (rows) and lesion-size stratum."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, n_subjects: int, n_thresholds: int, n_strata: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("volumes", torch.zeros(n_subjects, n_thresholds, 4, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("strata", torch.zeros(max(n_strata, 1), n_thresholds, 4, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, counts: Tensor, subject_index: Tensor, stratum: Tensor) -> None:
        """``counts`` [S,T,4] per slice; ``subject_index`` [S]; ``stratum`` [S] (-1: no lesion, not stratified)."""
        counts = counts.to(self.volumes.device)
        self.volumes.index_add_(0, subject_index.to(self.volumes.device), counts)
        keep = (stratum >= 0).to(self.volumes.device)
        self.strata.index_add_(0, stratum.to(self.volumes.device)[keep], counts[keep])

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        return self.volumes.cpu().numpy(), self.strata.cpu().numpy()


def operating_point(counts: np.ndarray, threshold: float) -> OperatingPoint:
    """Pooled point from summed ``[4]`` counts."""
    tp, fp, fn, tn = (int(v) for v in counts)
    return OperatingPoint(threshold, tp, fp, fn, tn)


def volume_dice(volumes: np.ndarray) -> tuple[float, float, int]:
    """Mean and std (population) of per-volume Dice over volumes that contain lesion pixels; their number."""
    with_lesion = volumes[(volumes[:, TP] + volumes[:, FN]) > 0]
    if len(with_lesion) == 0:
        return math.nan, math.nan, 0
    dice = 2 * with_lesion[:, TP] / (2 * with_lesion[:, TP] + with_lesion[:, FP] + with_lesion[:, FN])
    return float(dice.mean()), float(dice.std()), len(dice)
