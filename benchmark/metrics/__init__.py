"""The evaluation engine: metric states that give the same result on one device or many.

Names are imported on first use (PEP 562), so that numpy-only modules such as :mod:`benchmark.metrics.bootstrap`
and :mod:`benchmark.metrics.subject_counts` (read by the leaderboard, the report and ``compare``) do not pull in
torch, torchmetrics and Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PROFILES": "postprocessing",
    "BinaryRanking": "ranking",
    "BinnedCurves": "curves",
    "EvaluationSettings": "settings",
    "HealthyCalibration": "calibration",
    "MethodOutputError": "evaluator",
    "OperatingPoint": "curves",
    "PixelHistogram": "histogram",
    "PostProcessing": "postprocessing",
    "ScoreBins": "binning",
    "SetLayout": "evaluator",
    "TestSetEvaluator": "evaluator",
    "add_vs_healthy": "evaluator",
    "check_output": "evaluator",
    "threshold_name": "settings",
}

__all__ = [  # the keys of _EXPORTS
    "PROFILES",
    "BinaryRanking",
    "BinnedCurves",
    "EvaluationSettings",
    "HealthyCalibration",
    "MethodOutputError",
    "OperatingPoint",
    "PixelHistogram",
    "PostProcessing",
    "ScoreBins",
    "SetLayout",
    "TestSetEvaluator",
    "add_vs_healthy",
    "check_output",
    "threshold_name",
]

if TYPE_CHECKING:  # static analysers see ordinary imports
    from benchmark.metrics.binning import ScoreBins
    from benchmark.metrics.calibration import HealthyCalibration
    from benchmark.metrics.curves import BinnedCurves, OperatingPoint
    from benchmark.metrics.evaluator import (
        MethodOutputError,
        SetLayout,
        TestSetEvaluator,
        add_vs_healthy,
        check_output,
    )
    from benchmark.metrics.histogram import PixelHistogram
    from benchmark.metrics.postprocessing import PROFILES, PostProcessing
    from benchmark.metrics.ranking import BinaryRanking
    from benchmark.metrics.settings import EvaluationSettings, threshold_name


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
