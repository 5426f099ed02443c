"""Per-test-set metrics from (batch, AnomalyOutput) pairs: the evaluation engine's front door.

* Pixel ranking metrics (AUROC, AUPRC, oracle best Dice, curves) over ``roi`` pixels only (background excluded,
  ``bg_included = false``) from constant-memory histograms of the raw maps.
* Metrics at the thresholds calibrated on healthy validation data (Dice, precision, recall, FPR pooled over the
  test set's roi pixels, and Dice mean / std over volumes), after the post-processing profile.
* Sample metrics: AUROC / AUPRC of ``anomaly_score`` against the slice ``label``, and score distributions;
  with a ``healthy`` test set also ``sample.vs_healthy``: this set's anomalous slices against the healthy set's
  slices (:func:`add_vs_healthy`).
* Lesion-size strata: slices grouped by lesion area (pixels of the slice's mask; slices without lesion pixels
  are not stratified), AUPRC, best Dice and calibrated Dice per stratum.
* Per-subject counts (:attr:`TestSetEvaluator.subject_counts` after ``compute``): each subject's roi pixels per
  bin of the coarse :data:`SUBJECT_BINS` layout and its counts at the calibrated thresholds, for the subject
  bootstrap (:mod:`benchmark.metrics.bootstrap`); its single-run 95 % intervals go to ``pixel.ci95`` (AUROC,
  AUPRC) and ``calibrated.<threshold>.dice_ci95``.

Undefined values are NaN (``null`` in JSON) with the reason in ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmark.metrics.binning import ScoreBins
from benchmark.metrics.bootstrap import DEFAULT_RESAMPLING, calibrated_dice, run_intervals
from benchmark.metrics.curves import NO_NEGATIVES, NO_POSITIVES, BinnedCurves
from benchmark.metrics.histogram import PixelHistogram
from benchmark.metrics.ranking import BinaryRanking, ranking_metrics
from benchmark.metrics.settings import EvaluationSettings
from benchmark.metrics.subject_counts import SubjectCounts
from benchmark.metrics.thresholded import ThresholdedCounts, confusion_counts, operating_point, volume_dice
from benchmark.metrics.volumes import MapStream, slices_per_subject
from datamodules.base import HEALTHY_TEST_SET
from lightning_modules.base import AnomalyOutput

# Per-subject histograms: 32 sub-bins per octave (relative width 1/32, ~3 %) over [2**-24, 2**24) (6e-8 to 1.7e7)
# plus the exact zero / underflow / overflow bins: 1539 bins, 24.6 KB of int64 counts per subject (12 MB for 500
# subjects), where the pooled layout (1024 sub-bins) would take 1.3 MB per subject. Summed over subjects they give
# the fine pooled AUROC within 1e-3 and AUPRC within 0.02 (ties in coarse bins; worst for narrow score
# distributions, tests/test_bootstrap.py); the bootstrap centres its replicates on the fine values, which leaves
# about 4e-3 (module docstring of benchmark.metrics.bootstrap). Twice the sub-bins would halve these errors at
# twice the memory and leaderboard time.
SUBJECT_BINS = ScoreBins(sub_bins_per_octave=32, min_exponent=24, max_exponent=24)
CI_KEY = "ci95"  # pixel.ci95 = {"auroc": [low, high], "auprc": [low, high]}; calibrated.<t>.dice_ci95


class MethodOutputError(RuntimeError):
    """A method returned an anomaly map or score that violates the output contract."""


def check_output(output: Any, batch: dict[str, Any], method: str, variants: Sequence[str] = ()) -> None:
    """Reject outputs that would silently corrupt metrics: wrong type or shape, NaN/Inf, negative maps, and
    score variants other than the ones the method declares (``score_variants``)."""
    if not isinstance(output, AnomalyOutput):
        raise MethodOutputError(
            f"method {method}: predict_anomaly must return AnomalyOutput, got {type(output).__name__}")
    if list(output.variants) != list(variants):
        raise MethodOutputError(f"method {method}: returned score variants {list(output.variants)}, but its "
                                f"score_variants property declares {list(variants)}; they must match in order")
    for name, single in output.by_variant().items():
        _check_single(single, batch, method if name is None else f"{method}[{name}]")


def _check_single(output: AnomalyOutput, batch: dict[str, Any], method: str) -> None:
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


def add_vs_healthy(results: dict[str, dict[str, Any]], curves: dict[str, dict[str, Any]],
                   reference: str = HEALTHY_TEST_SET) -> None:
    """Sample metrics of each test set's anomalous slices against every slice of the healthy test set.

    The leave-one-class-out protocol (and BMAD / MedIAnomaly's normal-vs-abnormal test images) ranks anomalous
    samples against a separate healthy test set: ``sample.vs_healthy`` = AUROC / AUPRC of this set's anomalous
    scores against the ``reference`` set's normal scores. Added in place; nothing when there is no such set.
    """
    if reference not in results:
        return
    negatives = torch.tensor(curves[reference]["sample_scores"]["normal"], dtype=torch.float32)
    for name, result in results.items():
        if name == reference:
            continue
        positives = torch.tensor(curves[name]["sample_scores"]["anomalous"], dtype=torch.float32)
        metrics = ranking_metrics(negatives, positives)
        if metrics["reason"]:
            result["notes"]["sample.vs_healthy"] = metrics["reason"]
        result["sample"]["vs_healthy"] = {"auroc": metrics["auroc"], "auprc": metrics["auprc"],
                                          "reference": reference, "n_healthy_slices": int(negatives.numel()),
                                          "n_anomalous_slices": int(positives.numel())}


class SetLayout:
    """What the evaluator needs to know about a set before its batches arrive: subjects and lesion areas."""

    def __init__(self, subjects: Sequence[str], lesion_areas: np.ndarray) -> None:
        self.slices_per_subject = slices_per_subject(subjects)
        self.subjects = list(self.slices_per_subject)  # sorted
        self.lesion_areas = np.asarray(lesion_areas, dtype=np.int64)

    @classmethod
    def from_arrays(cls, subjects: Sequence[str], masks: np.ndarray) -> SetLayout:
        """From a split's subjects and masks ``[N,1,H,W]`` (lesion area = mask pixels of each slice)."""
        areas = np.array([int(np.count_nonzero(m)) for m in masks], dtype=np.int64)
        return cls(subjects, areas)


def stratum_names(n: int) -> list[str]:
    return ["small", "medium", "large"] if n == 3 else [f"size_{i}" for i in range(n)]


def size_edges(areas: np.ndarray, configured: Sequence[float] | None) -> tuple[list[float], str]:
    """Lesion-area bin edges: configured, or the 25th / 75th percentiles of the slices with lesion pixels."""
    if configured is not None:
        return [float(e) for e in configured], "configured"
    lesion = areas[areas > 0]
    if len(lesion) == 0:
        return [], "no slices with lesion pixels"
    edges = np.unique(np.percentile(lesion, [25, 75]))
    return edges.tolist(), "25th / 75th percentiles of slice lesion areas in this test set (ATLAS protocol)"


def subject_layout() -> dict[str, int]:
    """The per-subject bin layout as recorded in ``subject_counts.npz``."""
    return {"sub_bins_per_octave": SUBJECT_BINS.sub_bins_per_octave, "min_exponent": SUBJECT_BINS.min_exponent,
            "max_exponent": SUBJECT_BINS.max_exponent, "n_bins": SUBJECT_BINS.n_bins}


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.nan


class TestSetEvaluator(nn.Module):
    """All metrics of one test set. ``thresholds``: name -> calibrated threshold (``None``: not calibrated)."""

    def __init__(self, settings: EvaluationSettings, layout: SetLayout,
                 thresholds: dict[str, float] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.layout = layout
        self.subject_index = {s: i for i, s in enumerate(layout.subjects)}
        self.edges, self.edge_source = size_edges(layout.lesion_areas, settings.lesion_size_edges)
        self.register_buffer("_edges", torch.tensor(self.edges, dtype=torch.float64), persistent=False)
        self.n_strata = len(self.edges) + 1 if self.edges else 0  # no edges: no slice with lesion pixels
        # group 0: slices without lesion pixels; group 1 + i: lesion-size stratum i (pooled = all groups)
        self.pixels = PixelHistogram(1 + self.n_strata, settings.bins)
        self.subject_pixels = PixelHistogram(len(layout.subjects), SUBJECT_BINS)
        self.subject_counts: SubjectCounts | None = None  # set by compute()
        self.samples = BinaryRanking()
        self.thresholds = dict(thresholds or {})
        self.stream = MapStream(settings.postprocessing, layout.slices_per_subject)
        self.counts = (ThresholdedCounts(len(layout.subjects), len(self.thresholds), self.n_strata)
                       if self.thresholds else None)

    def _stratum(self, mask: Tensor) -> Tensor:
        """Stratum of each slice ``[S]`` from its lesion area (-1: no lesion pixels)."""
        area = mask.flatten(1).sum(1)
        index = torch.bucketize(area.to(torch.float64), self._edges.to(area.device))
        return torch.where(area > 0, index, torch.full_like(index, -1))

    def update(self, batch: dict[str, Any], output: AnomalyOutput) -> None:
        roi = batch["roi"][:, 0] > 0.5
        mask = batch["mask"][:, 0] > 0.5
        group = (self._stratum(mask) + 1)[:, None, None]
        anomaly_map = output.anomaly_map[:, 0].to(roi.device)
        self.pixels.update(anomaly_map, mask, torch.where(roi, group, -1))
        rows, local = self._subject_rows(batch["subject"])
        self.subject_pixels.update(anomaly_map, mask, torch.where(roi, local.to(roi.device)[:, None, None], -1), rows)
        self.samples.update(output.anomaly_score.to(roi.device), batch["label"])
        if self.counts is None:
            return
        thresholds = torch.tensor(list(self.thresholds.values()), dtype=torch.float32)
        for chunk in self.stream(batch, output.anomaly_map):
            flags = self.stream.flags(chunk, thresholds.to(chunk.anomaly_map.device))
            counts = confusion_counts(flags, chunk.mask, chunk.roi)
            index = torch.tensor([self.subject_index[s] for s in chunk.subjects])
            self.counts.update(counts, index, self._stratum(chunk.mask).cpu())

    def _subject_rows(self, subjects: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The state rows of the distinct subjects of a batch, and each slice's position among them."""
        rows: dict[int, int] = {}
        local = [rows.setdefault(self.subject_index[s], len(rows)) for s in subjects]
        return torch.tensor(list(rows), dtype=torch.long), torch.tensor(local, dtype=torch.int32)

    # ---- results ----------------------------------------------------------------------------------------------
    def compute(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(metrics, curves)``: nested metrics of this set; its pixel ROC / PR curves and slice scores by label.

        Also sets :attr:`subject_counts` (the per-subject counts behind the ``ci95`` intervals)."""
        self.stream.finish()
        notes: dict[str, str] = {}
        groups = self.pixels.compute()
        pixel_curves = BinnedCurves.pooled(groups)
        sample = self.samples.compute()
        result: dict[str, Any] = {
            "pixel": self._ranking(pixel_curves, "pixel", notes),
            "sample": self._sample(sample, notes),
        }
        volumes = strata = None
        if self.counts is not None:
            volumes, strata = self.counts.compute()
            result["calibrated"] = {name: self._calibrated(volumes[:, t], threshold, f"calibrated.{name}", notes)
                                    for t, (name, threshold) in enumerate(self.thresholds.items())}
        else:
            notes["calibrated"] = "no healthy calibration: thresholded metrics skipped"
        result["lesion_size"] = self._lesion_size(groups[1:], strata, notes)
        fine = {f"pixel/{key}": result["pixel"][key] for key in ("auroc", "auprc")}
        self.subject_counts = SubjectCounts.from_histogram(self.layout.subjects, self._subject_histogram(),
                                                           list(self.thresholds), volumes, subject_layout(), fine)
        self._add_intervals(result, self.subject_counts)
        result["notes"] = notes
        points = self.settings.curve_points
        curves = {"roc": pixel_curves.roc(points), "pr": pixel_curves.pr(points), "sample_scores": sample["scores"]}
        return result, curves

    def _subject_histogram(self) -> np.ndarray:
        """``[S, 2, n_bins]`` per-subject counts, synced across ranks like every metric state."""
        groups = self.subject_pixels.compute()
        if not groups:
            return np.zeros((0, 2, SUBJECT_BINS.n_bins), dtype=np.int64)
        return np.stack([np.stack([group.negative, group.positive]) for group in groups])

    @staticmethod
    def _add_intervals(result: dict[str, Any], counts: SubjectCounts) -> None:
        """The single-run subject-bootstrap intervals: ``pixel.ci95`` and ``calibrated.<t>.dice_ci95``."""
        nan = (math.nan, math.nan)
        intervals = run_intervals(counts, DEFAULT_RESAMPLING) if counts.subjects else {}
        result["pixel"][CI_KEY] = {key: list(intervals.get(f"pixel/{key}", nan)) for key in ("auroc", "auprc")}
        for name, entry in result.get("calibrated", {}).items():
            entry[f"dice_{CI_KEY}"] = list(intervals.get(calibrated_dice(name), nan))

    @staticmethod
    def _ranking(curves: BinnedCurves, prefix: str, notes: dict[str, str]) -> dict[str, Any]:
        best = curves.best_dice()
        if curves.n_positive == 0:
            for key in ("auroc", "auprc", "best_dice"):
                notes[f"{prefix}.{key}"] = NO_POSITIVES
        elif curves.n_negative == 0:
            notes[f"{prefix}.auroc"] = NO_NEGATIVES
        return {
            "auroc": curves.auroc(),
            "auprc": curves.average_precision(),
            "best_dice": best.dice if best else math.nan,
            "best_dice_threshold": best.threshold if best else math.nan,
            "n_roi_pixels": curves.n_positive + curves.n_negative,
            "n_lesion_pixels": curves.n_positive,
        }

    @staticmethod
    def _sample(sample: dict[str, Any], notes: dict[str, str]) -> dict[str, Any]:
        if sample["reason"]:
            notes["sample.auroc"] = notes["sample.auprc"] = sample["reason"]
        return {"auroc": sample["auroc"], "auprc": sample["auprc"],
                "n_slices": sample["n_positive"] + sample["n_negative"], "n_anomalous_slices": sample["n_positive"],
                "score_distribution": sample["distributions"]}

    @staticmethod
    def _calibrated(volumes: np.ndarray, threshold: float, key: str, notes: dict[str, str]) -> dict[str, Any]:
        point = operating_point(volumes.sum(0), threshold)
        mean, std, n_volumes = volume_dice(volumes)
        if point.tp + point.fn == 0:
            notes[f"{key}.dice"] = notes[f"{key}.volume_dice"] = NO_POSITIVES
        if point.tp + point.fp == 0:
            notes[f"{key}.precision"] = "no pixel flagged at this threshold: precision undefined"
        return {"threshold": _finite(threshold), "dice": point.dice, "precision": point.precision,
                "recall": point.recall, "fpr": point.fpr, "volume_dice_mean": mean, "volume_dice_std": std,
                "n_volumes_with_lesion": n_volumes}

    def _lesion_size(self, strata_curves: list[BinnedCurves], strata_counts: np.ndarray | None,
                     notes: dict[str, str]) -> dict[str, Any]:
        result: dict[str, Any] = {"edges": self.edges, "edge_source": self.edge_source, "bins": {}}
        if not self.n_strata:
            notes["lesion_size"] = self.edge_source
            return result
        lesion = self.layout.lesion_areas[self.layout.lesion_areas > 0]
        n_slices = np.bincount(np.searchsorted(self.edges, lesion, side="left"), minlength=len(self.edges) + 1)
        bounds = [1.0, *self.edges, math.inf]
        names = stratum_names(len(self.edges) + 1)
        for i, curves in enumerate(strata_curves):
            key = f"lesion_size.{names[i]}"
            ranking = self._ranking(curves, key, notes)
            entry = {"area_pixels": [bounds[i], bounds[i + 1]], "n_slices": int(n_slices[i]),
                     "n_lesion_pixels": ranking["n_lesion_pixels"], "auprc": ranking["auprc"],
                     "best_dice": ranking["best_dice"]}
            if strata_counts is not None:
                for t, (name, threshold) in enumerate(self.thresholds.items()):
                    entry[f"dice@{name}"] = operating_point(strata_counts[i, t], threshold).dice
            result["bins"][names[i]] = entry
        return result
