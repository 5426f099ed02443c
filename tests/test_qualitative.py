"""The qualitative slices of a run: the same slices on 1 and 2 DDP processes, and through a smoke sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.naming import qualitative_arrays_name, qualitative_name
from benchmark.qualitative import load_qualitative, select_slices
from tests.tiny_runs import run_ddp_script

SCRIPT = Path(__file__).with_name("ddp_qualitative.py")


def _run(tmp_path: Path, devices: int) -> Path:
    run_dir = tmp_path / f"devices{devices}"
    run_ddp_script(SCRIPT, run_dir, devices, tmp_path / "data")
    return run_dir / "figures"


@pytest.mark.slow
def test_two_processes_save_the_single_process_slices(tmp_path):
    single, double = _run(tmp_path, 1), _run(tmp_path, 2)
    for test_set in ("healthy", "tumor"):
        one = load_qualitative(single / qualitative_arrays_name(test_set), test_set)
        two = load_qualitative(double / qualitative_arrays_name(test_set), test_set)
        assert one is not None and two is not None and len(one.indices) == 16
        assert len(set(one.subjects)) > 1  # slices of several subjects: both ranks contributed
        for name in ("indices", "subjects", "slices", "images", "masks", "rois", "reconstruction"):
            assert np.array_equal(getattr(one, name), getattr(two, name)), (test_set, name)
        assert list(one.maps) == list(two.maps) == ["bright", "square"]
        for variant, values in one.maps.items():
            assert np.array_equal(values, two.maps[variant])
            assert np.allclose(values, one.images if variant == "bright" else one.images ** 2, atol=1e-6)
        assert np.allclose(one.reconstruction, 0.5 * one.images, atol=1e-6)
        for variant in ("bright", "square"):
            assert (double / qualitative_name(test_set, variant)).is_file()


@pytest.mark.slow
def test_smoke_sweep_saves_the_datasets_slices_and_the_report_shows_them(tmp_path, monkeypatch):
    from datamodules.synthetic_brain import SyntheticBrainDataModule

    monkeypatch.setenv("NORMBENCH_DATA_DIR", str(tmp_path / "data"))
    assert main(["sweep", "--config", "smoke", "--results-dir", str(tmp_path / "results"), "--quiet"]) == 0
    folder = tmp_path / "results" / "smoke"
    run = folder / "runs" / "synthetic_brain" / "ae" / "seed_0"
    datamodule = SyntheticBrainDataModule(**_smoke_data(run))
    datamodule.setup()
    tests = datamodule.splits.tests
    report = (folder / "report.md").read_text()
    for test_set, arrays in tests.items():
        shown = load_qualitative(run / "figures" / qualitative_arrays_name(test_set), test_set)
        assert shown is not None and shown.reconstruction is not None  # the AE restores images
        indices, criterion = select_slices(arrays.masks, arrays.rois, 4, arrays.subjects)
        assert shown.indices.tolist() == indices.tolist() and shown.criterion == criterion
        assert np.array_equal(shown.masks, arrays.masks[indices, 0])
        assert list(shown.subjects) == arrays.subjects[indices].tolist()
        assert (folder / "figures" / f"qualitative_synthetic_brain_{test_set}.png").is_file()
        assert f"(figures/qualitative_synthetic_brain_{test_set}.png)" in report
        other = load_qualitative(folder / "runs" / "synthetic_brain" / "random" / "seed_0" / "figures"
                                 / qualitative_arrays_name(test_set), test_set)
        assert other is not None and other.reconstruction is None
        assert other.indices.tolist() == indices.tolist()  # every method shows the same slices
    board = pd.read_csv(folder / "leaderboard.csv")
    for test_set in set(board.loc[board["pixel/auroc:mean"].notna(), "test_set"]):
        assert (folder / "figures" / f"forest_synthetic_brain_{test_set}.png").is_file()
    assert "bars_" not in report


def _smoke_data(run: Path) -> dict:
    """The smoke run's resolved dataset arguments (from its config.yaml)."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    return dict(config["dataset"]["init_args"])
