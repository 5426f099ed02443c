"""Averages over the variants of one dataset (families), on a hand-made leaderboard."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmark.families import family_averages, family_of, family_table

NAN = math.nan
A, B = "pixel/auprc", "sample/auroc"


def _board() -> pd.DataFrame:
    rows = [  # dataset, method, test_set, A mean, A std, B mean
        ("digits@held_out_class=0", "ae", "test", 0.2, 0.01, 0.6),
        ("digits@held_out_class=1", "ae", "test", 0.4, 0.02, NAN),
        ("digits@held_out_class=2", "ae", "test", 0.9, NAN, 0.8),
        ("digits@held_out_class=0", "random", "test", 0.1, 0.0, 0.5),
        ("digits@held_out_class=1", "random", "test", NAN, NAN, 0.5),
        ("digits@held_out_class=2", "random", "test", 0.1, 0.0, 0.5),
        ("digits@held_out_class=0", "vae", "-", NAN, NAN, NAN),  # every seed failed
        ("digits@held_out_class=0", "ae", "val", 0.5, 0.0, 0.5),
        ("digits@held_out_class=1", "ae", "val", 0.7, 0.0, 0.5),
        ("synthetic_brain", "ae", "tumor", 0.3, 0.1, 0.7),  # a single member: no family row
        ("synthetic_brain", "random", "tumor", 0.05, 0.0, 0.5),
        ("brain@seed=0", "ae", "all", NAN, NAN, 0.9),
        ("brain", "ae", "all", NAN, NAN, 0.7),  # the plain config joins the family of its variants
    ]
    frame = pd.DataFrame(rows, columns=["dataset", "method", "test_set", f"{A}:mean", f"{A}:std", f"{B}:mean"])
    frame.insert(3, "rank", 1)
    return frame


def test_family_of():
    assert family_of("digits@held_out_class=3") == "digits"
    assert family_of("vae@log_std=-1.0,lr=0.001") == "vae"
    assert family_of("synthetic_brain") == "synthetic_brain"


def test_family_averages_against_hand_computed_numbers():
    frame = family_averages(_board(), [A, B])
    assert list(frame.columns) == ["family", "method", "test_set", "n_datasets", "datasets", f"{A}:mean_over_datasets",
                                   f"{A}:std_over_datasets", f"{B}:mean_over_datasets", f"{B}:std_over_datasets"]
    keys = list(zip(frame["family"], frame["test_set"], frame["method"], strict=True))
    # sorted by family, test set, then the first metric's average (NaN last), then method
    assert keys == [("brain", "all", "ae"), ("digits", "test", "ae"), ("digits", "test", "random"),
                    ("digits", "val", "ae")]
    row = frame.set_index(["family", "test_set", "method"]).loc[("digits", "test", "ae")]
    assert row["n_datasets"] == 3
    assert row["datasets"] == "digits@held_out_class=0;digits@held_out_class=1;digits@held_out_class=2"
    assert row[f"{A}:mean_over_datasets"] == pytest.approx(0.5)
    assert row[f"{A}:std_over_datasets"] == pytest.approx(math.sqrt(((0.3**2) + (0.1**2) + (0.4**2)) / 2))
    assert row[f"{B}:mean_over_datasets"] == pytest.approx(0.7)  # the NaN member left out
    assert row[f"{B}:std_over_datasets"] == pytest.approx(math.sqrt(0.02))


def test_nan_members_and_counts():
    frame = family_averages(_board(), [A, B]).set_index(["family", "test_set", "method"])
    random = frame.loc[("digits", "test", "random")]
    assert random["n_datasets"] == 2 and random["datasets"].count(";") == 2  # 3 rows, 2 finite first-metric means
    assert random[f"{A}:mean_over_datasets"] == pytest.approx(0.1) and random[f"{A}:std_over_datasets"] == 0.0
    brain = frame.loc[("brain", "all", "ae")]
    assert brain["n_datasets"] == 0 and math.isnan(brain[f"{A}:mean_over_datasets"])
    assert brain[f"{B}:mean_over_datasets"] == pytest.approx(0.8)
    assert family_averages(_board(), [B, A]).set_index(["family", "test_set", "method"]).loc[
        ("brain", "all", "ae"), "n_datasets"] == 2  # n_datasets follows the first metric


def test_single_members_failed_groups_and_empty_input_are_left_out():
    frame = family_averages(_board(), [A])
    assert "synthetic_brain" not in set(frame["family"])
    assert "vae" not in set(frame["method"])
    lone = _board()[_board()["dataset"].isin(["synthetic_brain", "digits@held_out_class=0"])]
    empty = family_averages(lone, [A])
    assert empty.empty and "n_datasets" in empty.columns
    assert family_table(empty, [("AUPRC", A)]) is None


def test_missing_metric_column_gives_nan():
    frame = family_averages(_board(), ["pixel/auroc"])
    assert frame["n_datasets"].eq(0).all() and frame["pixel/auroc:mean_over_datasets"].isna().all()


def test_family_table():
    table = family_table(family_averages(_board(), [A, B]), [("pixel AUPRC", A), ("sample AUROC", B)])
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "family", "method", "test set", "datasets", "pixel AUPRC", "sample AUROC"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0] == ["brain", "ae", "all", "0", "n/a", "0.800 ± 0.141"]
    assert cells[1] == ["digits", "ae", "test", "3", "0.500 ± 0.361", "0.700 ± 0.141"]
    assert cells[3] == ["digits", "ae", "val", "2", "0.600 ± 0.141", "0.500 ± 0.000"]
    one_value = family_averages(_board().iloc[[0, 1]].assign(**{f"{A}:mean": [0.2, NAN]}), [A])
    last = family_table(one_value, [("AUPRC", A)]).splitlines()[-1]
    assert [c.strip() for c in last.strip("|").split("|")] == ["digits", "ae", "test", "1", "0.200"]  # no std
