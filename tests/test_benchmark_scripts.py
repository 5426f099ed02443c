"""The README's performance commands run (with tiny sizes): benchmarks/loader.py, metrics.py, evaluator.py,
overhead.py, diffusion.py, prepare.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_metric_engine_benchmark_reports_every_implementation():
    table = _script("metrics.py", "--sizes", "20000", "--chunk", "5000")
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")}
    assert {"engine", "engine, 1 thread", "scikit-learn", "torchmetrics exact"} <= set(rows)
    assert float(rows["engine"][7]) < 1e-4  # |dAUROC| against scikit-learn on the same pixels


def test_evaluator_benchmark():
    table = _script("evaluator.py", "--batches", "2", "--batch-size", "4", "--size", "16")
    assert "| none |" in table and "| baur |" in table


@pytest.mark.slow
def test_loader_benchmark(tiny_sweep_setup):
    table = _script("loader.py", "--dataset", str(tiny_sweep_setup["dataset"]), "--items", "64", "--nifti-items", "2")
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ") and "slices/s" not in line]
    assert [row[1].strip() for row in rows] == ["cache (memmap)", "nifti+preprocess per item", "nifti-only per item"]
    assert all(float(row[2].replace(",", "")) > 0 for row in rows)


@pytest.mark.slow
def test_overhead_benchmark(tiny_sweep_setup):
    output = _script("overhead.py", "--dataset", str(tiny_sweep_setup["dataset"]), "--batches", "2", "--epochs", "1",
                     "--repeats", "2")
    assert "| lightning (harness) |" in output and "trainer.save_checkpoint" in output


def test_diffusion_benchmark_reports_both_precisions():
    table = _script("diffusion.py", "--size", "16", "--batch", "2", "--train-steps", "1", "--level", "100",
                    "--rounds", "1")
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")}
    assert {"32", "bf16"} <= set(rows) and "3 network calls, ddim" in table
    assert rows["32"][5].strip() == "1.00x" and float(rows["bf16"][4]) > 0


def test_prepare_benchmark():
    table = _script("prepare.py", "--subjects", "2", "--shape", "24", "24", "16", "--image-size", "16",
                    "--workers", "1")
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")}
    assert {"prepare --check headers", "prepare --check full, 1 thread(s)",
            "slice cache, 1 modality, 16 px"} <= set(rows)
    assert rows["prepare --check headers"][4].strip() == "1.0x"
