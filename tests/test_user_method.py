"""A user's method in their own module (examples/tiny_ae) runs through `sweep` and `compare` with no harness edit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmark.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny_ae"


def test_user_method_through_sweep_and_compare(tiny_sweep_setup, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLE))  # what PYTHONPATH=examples/tiny_ae does for the README command
    root, results = tiny_sweep_setup["root"], tiny_sweep_setup["root"] / "user_results"
    base = {"datasets": [str(tiny_sweep_setup["dataset"])], "seeds": [0], "trainer": str(tiny_sweep_setup["trainer"])}
    reference, mine = root / "reference.yaml", root / "mine.yaml"
    reference.write_text(yaml.safe_dump({**base, "methods": ["random", "intensity"]}))
    mine.write_text(yaml.safe_dump({**base, "methods": [str(EXAMPLE / "tiny_ae.yaml")]}))
    for config in (reference, mine):
        assert main(["sweep", "--config", str(config), "--results-dir", str(results), "--quiet"]) == 0

    reference_csv = results / "reference" / "leaderboard.csv"
    capsys.readouterr()
    assert main(["compare", str(results / "mine"), "--against", str(reference_csv)]) == 0
    printed = capsys.readouterr().out
    assert "tiny_ae" in printed and " of 3 |" in printed  # its place among itself and the two reference methods
    deltas = pd.read_csv(results / "mine" / "compare" / "compare.csv")
    mine_board = pd.read_csv(results / "mine" / "leaderboard.csv")
    ref_board = pd.read_csv(reference_csv)
    row = deltas[(deltas["test_set"] == "tumor") & (deltas["metric"] == "pixel/auprc")
                 & (deltas["ref_method"] == "random")].iloc[0]
    new_value = mine_board.loc[mine_board["test_set"] == "tumor", "pixel/auprc:mean"].iloc[0]
    ref_value = ref_board.loc[(ref_board["test_set"] == "tumor") & (ref_board["method"] == "random"),
                              "pixel/auprc:mean"].iloc[0]
    assert row["delta"] == pytest.approx(new_value - ref_value, abs=1e-12)
    assert (results / "mine" / "compare" / "compare.png").is_file()
