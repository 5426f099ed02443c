"""The evaluation protocol of a run (``configs/evaluation/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.metrics.binning import ScoreBins
from benchmark.metrics.postprocessing import PostProcessing

EVALUATION_KEYS = {
    "fpr_targets": "healthy-data pixel false-positive rates for calibrated thresholds (fractions, e.g. 0.01)",
    "postprocessing": "profile name (none, baur) or a mapping of its parameters",
    "lesion_size_edges": "slice lesion-area bin edges in pixels (null: 25th / 75th percentiles of each test set)",
    "sub_bins_per_octave": "histogram resolution (power of two; relative bin width = 1 / value)",
    "curve_points": "maximum points stored per ROC / PR curve in curves.json",
    "generative_samples": "samples drawn by a generative method (GAN) for its best-SSIM generative quality",
    "feature_extractor": "features of the AHI Frechet distances: auto (Inception from NORMBENCH_INCEPTION_PATH when "
                         "present, else the dataset's cached healthy encoder), inception or healthy_encoder",
    "detection_min_fraction": "lesion-level detection: a lesion counts as detected when more than this fraction of "
                              "its pixels is flagged (FastMRI+ rule: 0.1)",
}
GENERATIVE_SAMPLES = 64
FEATURE_EXTRACTORS = ("auto", "inception", "healthy_encoder")
DETECTION_MIN_FRACTION = 0.1


def threshold_name(fpr: float) -> str:
    """``0.01`` -> ``healthy_fpr@1%`` (the threshold source label used in every result)."""
    return f"healthy_fpr@{100 * fpr:g}%"


@dataclass(frozen=True)
class EvaluationSettings:
    """How test sets are scored: calibration targets, post-processing, lesion-size strata, histogram bins."""

    fpr_targets: tuple[float, ...] = (0.01, 0.02, 0.05)
    postprocessing: PostProcessing = field(default_factory=PostProcessing)
    lesion_size_edges: tuple[float, ...] | None = None
    bins: ScoreBins = field(default_factory=ScoreBins)
    curve_points: int = 1000
    generative_samples: int = GENERATIVE_SAMPLES
    feature_extractor: str = "auto"
    detection_min_fraction: float = DETECTION_MIN_FRACTION
    name: str = "default"

    def __post_init__(self) -> None:
        if not self.fpr_targets or any(not 0 < p < 1 for p in self.fpr_targets):
            raise ValueError(f"fpr_targets must be fractions in (0, 1), got {list(self.fpr_targets)}")
        edges = self.lesion_size_edges
        if edges is not None and (not edges or list(edges) != sorted(set(edges)) or edges[0] <= 0):
            raise ValueError(f"lesion_size_edges must be increasing positive pixel counts, got {list(edges)}")
        if self.curve_points < 2:
            raise ValueError(f"curve_points must be >= 2, got {self.curve_points}")
        if self.generative_samples < 1:
            raise ValueError(f"generative_samples must be > 0, got {self.generative_samples}")
        if self.feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(f"feature_extractor must be one of {FEATURE_EXTRACTORS}, got {self.feature_extractor!r}")
        if not 0 <= self.detection_min_fraction < 1:
            raise ValueError(f"detection_min_fraction must lie in [0, 1), got {self.detection_min_fraction}")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], name: str = "custom") -> EvaluationSettings:
        unknown = set(data) - set(EVALUATION_KEYS)
        if unknown:
            options = "; ".join(f"{k}: {v}" for k, v in EVALUATION_KEYS.items())
            raise ValueError(f"unknown key(s) {sorted(unknown)}; valid keys: {options}")
        edges = data.get("lesion_size_edges")
        return cls(
            fpr_targets=tuple(float(p) for p in data.get("fpr_targets", cls.fpr_targets)),
            postprocessing=PostProcessing.from_config(data.get("postprocessing", "none")),
            lesion_size_edges=None if edges is None else tuple(float(e) for e in edges),
            bins=ScoreBins(int(data.get("sub_bins_per_octave", ScoreBins.sub_bins_per_octave))),
            curve_points=int(data.get("curve_points", 1000)),
            generative_samples=int(data.get("generative_samples", GENERATIVE_SAMPLES)),
            feature_extractor=str(data.get("feature_extractor", "auto")),
            detection_min_fraction=float(data.get("detection_min_fraction", DETECTION_MIN_FRACTION)),
            name=name,
        )

    def to_mapping(self) -> dict[str, Any]:
        """The configuration mapping that :meth:`from_mapping` turns back into these settings.

        ``generative_samples``, ``feature_extractor`` and ``detection_min_fraction`` only when they are not the
        default: the mapping is part of every job's key, and a key added with its default value would make every
        finished run look changed (and rerun)."""
        mapping = {
            "fpr_targets": list(self.fpr_targets),
            "postprocessing": self.postprocessing.describe(),
            "lesion_size_edges": None if self.lesion_size_edges is None else list(self.lesion_size_edges),
            "sub_bins_per_octave": self.bins.sub_bins_per_octave,
            "curve_points": self.curve_points,
        }
        if self.generative_samples != GENERATIVE_SAMPLES:
            mapping["generative_samples"] = self.generative_samples
        if self.feature_extractor != "auto":
            mapping["feature_extractor"] = self.feature_extractor
        if self.detection_min_fraction != DETECTION_MIN_FRACTION:
            mapping["detection_min_fraction"] = self.detection_min_fraction
        return mapping

    @property
    def threshold_names(self) -> list[str]:
        return [threshold_name(p) for p in self.fpr_targets]

    def describe(self) -> dict[str, Any]:
        return {
            "profile": self.name,
            "fpr_targets": list(self.fpr_targets),
            "postprocessing": self.postprocessing.describe(),
            "lesion_size_edges": "test-set quartiles (25th, 75th percentiles)" if self.lesion_size_edges is None
            else list(self.lesion_size_edges),
            "histogram": self.bins.describe(),
            "generative_samples": self.generative_samples,
            "feature_extractor": self.feature_extractor,
            "detection_min_fraction": self.detection_min_fraction,
        }
