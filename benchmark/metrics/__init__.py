"""The evaluation engine: metric states that work the same on one device or many."""

from benchmark.metrics.evaluator import DetectionMetrics, MethodOutputError, check_output
from benchmark.metrics.ranking import BinaryRanking

__all__ = ["BinaryRanking", "DetectionMetrics", "MethodOutputError", "check_output"]
