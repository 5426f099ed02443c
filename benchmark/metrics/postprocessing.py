"""Post-processing profiles applied to anomaly maps before the thresholded metrics.

``none`` (default) evaluates the raw maps. ``baur`` follows Baur et al. (MedIA 2021, ``utils/Evaluation.py``):
the map is multiplied by the roi eroded ``roi_erosion_iterations`` times with a cross-shaped 3x3 element (per
slice), filtered with a 3D median of ``median_size``, and after thresholding 3D connected components
(26-connectivity) with fewer than ``min_component_size`` voxels are removed (Baur removes components of <= 7
voxels, i.e. ``min_component_size = 8``). The 3D steps need whole volumes, which the evaluator reassembles from
slices. Ranking metrics (AUROC, AUPRC, best Dice) always use the raw maps; the profile changes calibration and
the metrics at calibrated thresholds, and its name is recorded with every result.

Baur's values were chosen for 256 x 256 slices; at 64 x 64 an erosion of 12 iterations removes a wide rim of
the brain, so scale ``roi_erosion_iterations`` with the image size for a like-for-like comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import remove_small_objects


@dataclass(frozen=True)
class PostProcessing:
    """One post-processing profile; zero disables a step."""

    name: str = "none"
    median_size: int = 0
    roi_erosion_iterations: int = 0
    min_component_size: int = 0

    def __post_init__(self) -> None:
        for field in ("median_size", "roi_erosion_iterations", "min_component_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"postprocessing.{field} must be a non-negative integer, got {value!r}")

    @classmethod
    def from_config(cls, value: str | dict[str, Any]) -> PostProcessing:
        """A profile name (``none``, ``baur``) or a mapping ``{name, median_size, ...}`` over the named profile."""
        if isinstance(value, str):
            if value not in PROFILES:
                raise ValueError(f"unknown postprocessing profile {value!r}; choose one of {sorted(PROFILES)} "
                                 "or give a mapping of its parameters")
            return PROFILES[value]
        if not isinstance(value, dict):
            raise ValueError(f"postprocessing must be a profile name or a mapping, got {type(value).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = set(value) - allowed
        if unknown:
            raise ValueError(f"postprocessing: unknown key(s) {sorted(unknown)}; valid keys: {sorted(allowed)}")
        base = PROFILES.get(value.get("name", "custom"), PROFILES["none"])
        return cls(**{**asdict(base), "name": value.get("name", "custom"), **value})

    @property
    def is_identity(self) -> bool:
        return self.median_size == 0 and self.roi_erosion_iterations == 0 and self.min_component_size == 0

    @property
    def needs_volumes(self) -> bool:
        """3D steps (median filter, connected components) need whole volumes."""
        return self.median_size > 1 or self.min_component_size > 1

    def prepare(self, anomaly_map: np.ndarray, roi: np.ndarray) -> np.ndarray:
        """Pre-threshold steps on one volume ``[D,H,W]``: eroded-roi masking, then the 3D median filter."""
        result = anomaly_map.astype(np.float32, copy=True)
        if self.roi_erosion_iterations:
            cross = ndimage.generate_binary_structure(3, 1)
            cross[0] = cross[2] = False  # in-plane cross: each slice eroded on its own
            eroded = ndimage.binary_erosion(roi, structure=cross, iterations=self.roi_erosion_iterations)
            result *= eroded
        if self.median_size > 1:
            result = ndimage.median_filter(result, size=self.median_size, mode="constant", cval=0.0)
        return result

    def binarise(self, prepared_map: np.ndarray, threshold: float) -> np.ndarray:
        """Flag ``map >= threshold``, then drop 3D components below ``min_component_size`` voxels."""
        flagged = prepared_map >= np.float32(threshold)
        if self.min_component_size > 1 and flagged.any():
            flagged = remove_small_objects(flagged, max_size=self.min_component_size - 1, connectivity=3)
        return flagged

    def describe(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, PostProcessing] = {
    "none": PostProcessing("none"),
    "baur": PostProcessing("baur", median_size=5, roi_erosion_iterations=12, min_component_size=8),
}
