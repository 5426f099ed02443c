"""The evaluation engine gives the same numbers on 1 and 2 DDP processes (CPU, gloo) on the same data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.tiny_runs import run_ddp_script

SCRIPT = Path(__file__).with_name("ddp_evaluation.py")


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def _evaluate(tmp_path: Path, devices: int) -> dict:
    out = tmp_path / f"devices{devices}.json"
    run_ddp_script(SCRIPT, out, devices, tmp_path / "data")
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_give_the_single_process_metrics(tmp_path):
    single = _evaluate(tmp_path, 1)
    double = _evaluate(tmp_path, 2)
    assert double["none"]["rank"] == 0
    for profile in ("none", "volumetric"):
        tumor = single[profile]["test_sets"]["tumor"]
        assert tumor["pixel"]["n_lesion_pixels"] > 0 and tumor["sample"]["n_slices"] > 10  # non-trivial data
        assert set(tumor["calibrated"]) == {"healthy_fpr@1%", "healthy_fpr@2%", "healthy_fpr@5%"}
        # per-subject counts and the intervals from them: compared leaf by leaf below (1 vs 2 processes)
        counts = single[profile]["subject_counts"]["tumor"]
        assert len(counts["subjects"]) == 3 and sum(map(sum, counts["calibrated"][0])) > 0
        assert sum(v for subject in counts["pixels"] for side in subject for v in side) == \
            tumor["pixel"]["n_roi_pixels"]
        low, high = tumor["pixel"]["ci95"]["auroc"]
        assert low < high and all(low <= v <= high for v in [tumor["pixel"]["auroc"]])
        assert all(v is not None for v in tumor["calibrated"]["healthy_fpr@5%"]["dice_ci95"])
    left, right = dict(_leaves(single)), dict(_leaves(double))
    left.pop("/none/rank"), left.pop("/volumetric/rank"), right.pop("/none/rank"), right.pop("/volumetric/rank")
    assert left.keys() == right.keys()
    for key, value in left.items():
        other = right[key]
        if isinstance(value, float) and isinstance(other, float):
            assert other == pytest.approx(value, abs=1e-6, rel=0), key
        elif value is None or other is None:
            assert value is None and other is None, key  # NaN (null) on both sides
        else:
            assert value == other, key
    for profile in ("none", "volumetric"):  # counts and intervals are identical, not merely close
        assert double[profile]["subject_counts"] == single[profile]["subject_counts"]
        for name, result in single[profile]["test_sets"].items():
            other = double[profile]["test_sets"][name]
            assert other["pixel"]["ci95"] == result["pixel"]["ci95"], name
            assert [e["dice_ci95"] for e in other["calibrated"].values()] == \
                [e["dice_ci95"] for e in result["calibrated"].values()], name
    # the volumetric profile post-processed whole volumes on each rank: its thresholded metrics differ from raw
    raw, processed = single["none"]["test_sets"]["tumor"], single["volumetric"]["test_sets"]["tumor"]
    assert raw["pixel"] == processed["pixel"]
    key = "healthy_fpr@5%"
    assert not math.isclose(raw["calibrated"][key]["dice"], processed["calibrated"][key]["dice"])
