"""Lesion-level detection with the FastMRI+ rule as used in GenAI (Bercea et al., Nature Communications 2025).

Per lesion (here each 8-connected component of a slice's binary lesion mask; the original uses one bounding box per
annotation row) and threshold ``th``: ``m`` = the anomaly map with values below ``th`` set to 0; ``pos`` = sum of
``m`` inside the lesion; ``neg`` = sum of ``m`` inside the roi outside *all* lesions of the slice (the false-positive
mass); ``TP = 1`` if more than ``min_fraction`` (0.1) of the lesion's pixels are flagged (map >= th), else 0 (exactly
10 % is not detected); ``FP = floor(neg / max(pos, 1))``; ``precision = TP / max(TP + FP, 1)``; ``recall = TP``;
``F1 = 2 P R / (P + R + 1e-8)``. A test set's scores are the means over its lesions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage.measure import label
from torch import Tensor

FIELDS = ("slice", "label", "area", "flagged_fraction", "tp", "fp", "precision", "recall", "f1", "fp_mass")
BOUNDARY_TOLERANCE = 1e-12  # relative: a flagged count equal to min_fraction * area is never rounded into a detection


def lesion_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (0 = background) of one [H, W] binary mask, and their number."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got {mask.shape}")
    labels, count = label(mask > 0, connectivity=2, return_num=True)
    return labels, int(count)


def _as_slices(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    """[B, 1, H, W] tensor or array -> [B, H, W] float64 array."""
    array = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float64)
    if array.ndim != 4 or array.shape[1] != 1:
        raise ValueError(f"{name} must be [B,1,H,W], got {array.shape}")
    return array[:, 0]


def batch_components(mask: Tensor | np.ndarray) -> np.ndarray:
    """8-connected lesion labels [B, H, W] of a [B,1,H,W] mask batch: label once, then pass them as ``components``
    to every :func:`detect_lesions` call on that batch (several maps, several thresholds)."""
    return np.stack([lesion_components(slice_mask)[0] for slice_mask in _as_slices(mask, "mask")])


def _slice_lesions(anomaly: np.ndarray, labels: np.ndarray, roi: np.ndarray, threshold: float,
                   min_fraction: float) -> list[dict[str, float]]:
    """Per-lesion rows of one [H, W] slice with lesion labels ``labels`` (0 = no lesion)."""
    count = int(labels.max(initial=0))
    flagged = anomaly >= threshold
    kept = np.where(flagged, anomaly, 0.0)
    neg = float(kept[(roi > 0) & (labels == 0)].sum())
    rows = []
    for lesion in range(1, count + 1):
        region = labels == lesion
        area = int(region.sum())
        n_flagged = int((flagged & region).sum())
        pos = float(kept[region].sum())
        tp = int(n_flagged > min_fraction * area * (1 + BOUNDARY_TOLERANCE))
        fp = math.floor(neg / max(pos, 1.0))
        precision = tp / max(tp + fp, 1)
        rows.append({"label": lesion, "area": area, "flagged_fraction": n_flagged / area, "tp": tp, "fp": fp,
                     "precision": precision, "recall": float(tp),
                     "f1": 2 * precision * tp / (precision + tp + 1e-8), "fp_mass": neg})
    return rows


def detect_lesions(anomaly_map: Tensor, mask: Tensor, roi: Tensor, threshold: float,
                   min_fraction: float = 0.1, components: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per lesion of a [B,1,H,W] batch: ``slice`` (batch index), ``label``, ``area``, ``flagged_fraction``, ``tp``,
    ``fp``, ``precision``, ``recall``, ``f1`` and ``fp_mass`` (the slice's thresholded map mass in the roi outside
    all lesions). Arrays are empty when the batch has no lesion. ``components``: the mask's labels from
    :func:`batch_components` (computed here when not given)."""
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    anomaly, brain = _as_slices(anomaly_map, "anomaly_map"), _as_slices(roi, "roi")
    labels = batch_components(mask) if components is None else np.asarray(components)
    if not anomaly.shape == labels.shape == brain.shape:
        raise ValueError(f"shapes differ: {anomaly.shape}, {labels.shape}, {brain.shape}")
    rows = []
    for index in range(anomaly.shape[0]):
        for row in _slice_lesions(anomaly[index], labels[index], brain[index], threshold, min_fraction):
            rows.append({"slice": index, **row})
    integer = {"slice", "label", "area", "tp", "fp"}
    return {f: np.array([r[f] for r in rows], dtype=np.int64 if f in integer else np.float64) for f in FIELDS}


def _size_bins(areas: np.ndarray, tp: np.ndarray, edges: Sequence[float]) -> list[dict[str, Any]]:
    """Count and detection rate per lesion-size bin: ``< edges[0]``, ``[edges[i], edges[i+1])``, ``>= edges[-1]``."""
    bounds = [-math.inf, *edges, math.inf]
    bins = []
    for lower, upper in itertools.pairwise(bounds):
        inside = (areas >= lower) & (areas < upper)
        n = int(inside.sum())
        rate = float(tp[inside].mean()) if n else math.nan
        bins.append({"lower": lower, "upper": upper, "n": n, "detection_rate": rate})
    return bins


def summarise_detection(per_lesion: dict[str, np.ndarray], size_edges: Sequence[float]) -> dict[str, Any]:
    """Means over the lesions (``detection_rate`` = mean TP, ``precision``, ``recall``, ``f1``, ``fp_mass``),
    ``n_lesions``, ``size_bins`` and ``note`` (NaN scores and a note when there is no lesion)."""
    edges = [float(e) for e in size_edges]
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"size_edges must be a non-empty increasing sequence, got {list(size_edges)}")
    tp = np.asarray(per_lesion["tp"], np.float64)
    n = int(tp.size)
    summary: dict[str, Any] = {"n_lesions": n, "note": None if n else "no lesions: detection scores undefined"}
    summary["detection_rate"] = float(tp.mean()) if n else math.nan
    for field in ("precision", "recall", "f1", "fp_mass"):
        summary[field] = float(np.mean(per_lesion[field])) if n else math.nan
    summary["size_bins"] = _size_bins(np.asarray(per_lesion["area"], np.float64), tp, edges)
    return summary
