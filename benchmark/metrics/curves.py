"""Ranking metrics from binned counts: ROC / PR curves, AUROC, average precision, best Dice, FPR thresholds.

Inputs are per-bin counts of positive and negative pixels (ascending bins) and each bin's lower edge. Every
occupied bin is one candidate threshold (flag ``x >= edge``), walked from the highest down, exactly as
scikit-learn walks distinct scores; values that share a bin are ties. With one distinct value per bin the
results equal scikit-learn's ``roc_auc_score`` (trapezoids) and ``average_precision_score`` (step sum).
All arithmetic is float64 on counts, so results do not depend on how pixels were split into batches or ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NO_POSITIVES = "no positive (lesion) pixels: metric undefined"
NO_NEGATIVES = "no negative (healthy) pixels: metric undefined"


@dataclass(frozen=True)
class OperatingPoint:
    """Pooled counts when flagging ``x >= threshold``."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def dice(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if self.tp + self.fn > 0 else math.nan

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp > 0 else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn > 0 else math.nan

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn > 0 else math.nan


class BinnedCurves:
    """Curves of one pair of histograms. ``positive``/``negative``: counts per bin; ``edges``: bin lower edges."""

    def __init__(self, positive: np.ndarray, negative: np.ndarray, edges: np.ndarray) -> None:
        self.positive = np.asarray(positive, dtype=np.int64)
        self.negative = np.asarray(negative, dtype=np.int64)
        self.edges = np.asarray(edges, dtype=np.float32)
        self.n_positive = int(self.positive.sum())
        self.n_negative = int(self.negative.sum())
        occupied = np.flatnonzero((self.positive + self.negative) > 0)[::-1]  # highest bin first
        self._bins = occupied
        self._tp = np.cumsum(self.positive[occupied], dtype=np.int64)
        self._fp = np.cumsum(self.negative[occupied], dtype=np.int64)

    @classmethod
    def pooled(cls, parts: list[BinnedCurves]) -> BinnedCurves:
        """The curves of the union of several groups' pixels."""
        return cls(sum(p.positive for p in parts), sum(p.negative for p in parts), parts[0].edges)

    # ---- whole-curve summaries -------------------------------------------------------------------------------
    def auroc(self) -> float:
        if self.n_positive == 0 or self.n_negative == 0:
            return math.nan
        tpr = np.concatenate([[0.0], self._tp / self.n_positive])
        fpr = np.concatenate([[0.0], self._fp / self.n_negative])
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))

    def average_precision(self) -> float:
        """Step-wise AP (no interpolation): sum over thresholds of (recall increase) x precision."""
        if self.n_positive == 0:
            return math.nan
        precision = self._tp / (self._tp + self._fp)
        recall_gain = np.diff(np.concatenate([[0], self._tp])) / self.n_positive
        return float(np.sum(recall_gain * precision))

    def best_dice(self) -> OperatingPoint | None:
        """The threshold with the highest pooled Dice (an oracle upper bound: it looks at the test labels)."""
        if self.n_positive == 0 or len(self._bins) == 0:
            return None
        dice = 2.0 * self._tp / (self._tp + self._fp + self.n_positive)
        best = int(np.argmax(dice))  # first maximum = highest threshold among equals
        return self.at_bin(int(self._bins[best]))

    # ---- operating points --------------------------------------------------------------------------------------
    def at_bin(self, bin_index: int) -> OperatingPoint:
        """Counts when flagging bins ``bin_index`` and above (``bin_index == n_bins``: nothing flagged)."""
        tp = int(self.positive[bin_index:].sum())
        fp = int(self.negative[bin_index:].sum())
        threshold = float(self.edges[bin_index]) if bin_index < len(self.edges) else math.inf
        return OperatingPoint(threshold, tp, fp, self.n_positive - tp, self.n_negative - fp)

    def bin_at_fpr(self, fpr: float) -> int:
        """Lowest occupied bin whose tail holds at most ``fpr`` of the negatives (``n_bins`` if none does).

        This is the most sensitive threshold whose false-positive rate on these (healthy) pixels is <= ``fpr``.
        """
        if self.n_negative == 0:
            raise ValueError("cannot calibrate a threshold without negative pixels")
        allowed = np.flatnonzero(self._fp <= fpr * self.n_negative)
        if len(allowed) == 0:  # even the highest occupied bin is too frequent: flag nothing seen here
            return int(self._bins[0]) + 1 if len(self._bins) else len(self.edges)
        return int(self._bins[allowed[-1]])

    # ---- curves for plots ---------------------------------------------------------------------------------------
    def roc(self, max_points: int | None = 1000) -> dict[str, list[float]]:
        fpr = np.concatenate([[0.0], self._fp / max(self.n_negative, 1)])
        tpr = np.concatenate([[0.0], self._tp / max(self.n_positive, 1)])
        thresholds = np.concatenate([[math.inf], self.edges[self._bins]])
        keep = _thin(fpr, tpr, max_points)
        return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "threshold": thresholds[keep].tolist()}

    def pr(self, max_points: int | None = 1000) -> dict[str, list[float]]:
        recall = self._tp / max(self.n_positive, 1)
        precision = self._tp / np.maximum(self._tp + self._fp, 1)
        keep = _thin(recall, precision, max_points)
        return {"recall": recall[keep].tolist(), "precision": precision[keep].tolist(),
                "threshold": self.edges[self._bins][keep].tolist()}


def _thin(x: np.ndarray, y: np.ndarray, max_points: int | None) -> np.ndarray:
    """Indices of at most ``max_points`` points spread evenly along the curve's length (first and last kept)."""
    n = len(x)
    if max_points is None or n <= max_points:
        return np.arange(n)
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    targets = np.linspace(0.0, length[-1], max_points)
    keep = np.unique(np.clip(np.searchsorted(length, targets), 0, n - 1))
    return np.unique(np.concatenate([[0], keep, [n - 1]]))
