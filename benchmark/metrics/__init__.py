"""The evaluation engine: metric states that give the same result on one device or many."""

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

__all__ = [
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
