"""Shared helpers of the tests that run tiny sweeps on the ``tiny_brain`` dataset (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path


def run_dir(results: Path, sweep: str, method: str) -> Path:
    """The run folder of ``method``'s seed-0 job on ``tiny_brain`` in ``results/<sweep>``."""
    return results / sweep / "runs" / "tiny_brain" / method / "seed_0"


def run_metrics(results: Path, sweep: str, method: str) -> dict:
    """That run's ``metrics.json``."""
    return json.loads((run_dir(results, sweep, method) / "metrics.json").read_text())
