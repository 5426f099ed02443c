"""Shared helpers of the tests that run tiny jobs: run folders of the ``tiny_brain`` sweeps (tests/conftest.py) and
the multi-process evaluation scripts (``tests/ddp_*.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_dir(results: Path, sweep: str, method: str) -> Path:
    """The run folder of ``method``'s seed-0 job on ``tiny_brain`` in ``results/<sweep>``."""
    return results / sweep / "runs" / "tiny_brain" / method / "seed_0"


def run_metrics(results: Path, sweep: str, method: str) -> dict:
    """That run's ``metrics.json``."""
    return json.loads((run_dir(results, sweep, method) / "metrics.json").read_text())


def run_ddp_script(script: Path, target: Path, devices: int, data: Path) -> None:
    """Run ``script target devices data`` in a fresh interpreter (one torch thread; the script starts its own
    processes) and fail the test with its stderr when it fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, str(script), str(target), str(devices), str(data)], cwd=data.parent,
                             env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
