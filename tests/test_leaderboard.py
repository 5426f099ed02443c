"""Leaderboard and compare on fake sweep folders: aggregation against numpy, ranks, failures, atomic writes."""

from __future__ import annotations

import json
import math
import multiprocessing
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmark.compare import compare
from benchmark.leaderboard import (
    build_leaderboard,
    collect_runs,
    flatten_metrics,
    group_primary,
    leaderboard_csv,
    read_leaderboard,
    write_leaderboard,
)
from benchmark.metrics.bootstrap import entry_replicates, paired_p_value, percentile_interval
from benchmark.metrics.subject_counts import SubjectCounts, write_subject_counts

DATASET = "synthetic_brain"
THRESHOLDS = {"healthy_fpr@1%": 0.37, "healthy_fpr@2%": 0.32, "healthy_fpr@5%": 0.25}
NO_LESION = "no positive (lesion) pixels: metric undefined"


# ---- fake metrics.json ----------------------------------------------------------------------------------------
def distribution(n: int, mean: float) -> dict[str, float]:
    quantiles = {f"q{q:02d}": mean + (q - 50) / 500 for q in (0, 5, 25, 50, 75, 95, 100)}
    return {"n": n, "mean": mean, "std": 0.01, **quantiles}


def healthy_set(seed: int) -> dict[str, Any]:
    calibrated = {name: {"threshold": t, "dice": None, "precision": 0.0, "recall": None,
                         "fpr": 0.009 * (i + 1) + 0.001 * seed, "volume_dice_mean": None, "volume_dice_std": None,
                         "n_volumes_with_lesion": 0} for i, (name, t) in enumerate(THRESHOLDS.items())}
    return {
        "pixel": {"auroc": None, "auprc": None, "best_dice": None, "best_dice_threshold": None,
                  "n_roi_pixels": 412423, "n_lesion_pixels": 0},
        "sample": {"auroc": None, "auprc": None, "n_slices": 223, "n_anomalous_slices": 0,
                   "score_distribution": {"normal": distribution(223, 0.05), "anomalous": {"n": 0}}},
        "calibrated": calibrated,
        "lesion_size": {"edges": [], "edge_source": "no slices with lesion pixels", "bins": {}},
        "notes": {"pixel.auprc": NO_LESION, "lesion_size": "no slices with lesion pixels"},
    }


def tumor_set(auprc: float, seed: int, null_precision: bool = False) -> dict[str, Any]:
    """Values derived from ``auprc`` and ``seed`` (``null_precision``: precision at 1 % is undefined)."""
    calibrated = {name: {"threshold": t, "dice": auprc / (i + 2), "precision": auprc + 0.1 * i,
                         "recall": 0.2 + 0.1 * i + 0.01 * seed, "fpr": 0.01 * (i + 1), "volume_dice_mean": auprc / 3,
                         "volume_dice_std": 0.05 + 0.01 * seed, "n_volumes_with_lesion": 5}
                  for i, (name, t) in enumerate(THRESHOLDS.items())}
    if null_precision:
        calibrated["healthy_fpr@1%"]["precision"] = None
    bins = {name: {"area_pixels": [lo, hi], "n_slices": 20 + k, "n_lesion_pixels": 500 * (k + 1),
                   "auprc": auprc * (k + 1) / 3, "best_dice": auprc * (k + 2) / 4,
                   **{f"dice@{t}": auprc / (k + 2) + 0.01 * j for j, t in enumerate(THRESHOLDS)}}
            for k, (name, lo, hi) in enumerate((("small", 1.0, 50.0), ("medium", 50.0, 148.0),
                                                ("large", 148.0, None)))}
    return {
        "pixel": {"auroc": 0.8 + auprc / 10, "auprc": auprc, "best_dice": auprc + 0.05,
                  "best_dice_threshold": 0.3 + 0.01 * seed, "n_roi_pixels": 400000, "n_lesion_pixels": 7727},
        "sample": {"auroc": 0.6 + auprc / 5, "auprc": 0.5 + auprc / 4, "n_slices": 220, "n_anomalous_slices": 81,
                   "score_distribution": {"normal": distribution(139, 0.05), "anomalous": distribution(81, 0.07)}},
        "calibrated": calibrated,
        "lesion_size": {"edges": [50.0, 148.0], "edge_source": "25th / 75th percentiles", "bins": bins},
        "notes": {},
    }


def completed(method: str, seed: int, auprc: float, null_precision: bool = False) -> dict[str, Any]:
    return {
        "schema": "normbench.metrics/2", "status": "completed", "method": method, "dataset": DATASET, "seed": seed,
        "key": f"{method}-{seed}-abc123",
        "test_sets": {"healthy": healthy_set(seed), "tumor": tumor_set(auprc, seed, null_precision)},
        "calibration": {"source": "healthy validation split", "pixels": "roi", "n_pixels": 412012,
                        "thresholds": {n: {"target_fpr": 0.01, "threshold": t, "achieved_fpr": 0.0099}
                                       for n, t in THRESHOLDS.items()}},
        "evaluation": {"profile": "default", "postprocessing": {"name": "none", "median_size": 0},
                       "best_dice_threshold_source": "oracle_test (upper bound: chosen on the test labels)"},
        "run": {"wall_time_s": 100.0 + 10 * seed + auprc, "data_time_s": 0.1, "train_time_s": 90.0 + seed,
                "calibration_time_s": 1.0, "test_time_s": 5.0 + seed, "epochs": 20, "global_steps": 580,
                "n_parameters": 340657, "train_slices": 903, "train_images_per_s": 200.0 + seed,
                "inference_images_per_s": 77.0 + seed, "device": "cpu", "precision": "32-true", "devices": 1,
                "torch_threads": 2},
        "versions": {"python": "3.11.7", "normbench": "0.1.0", "torch": "2.13.0+cpu", "pytorch-lightning": "2.6.6"},
    }


def failed(method: str, seed: int, kind: str, message: str) -> dict[str, Any]:
    return {"schema": "normbench.metrics/2", "status": "failed", "method": method, "dataset": DATASET, "seed": seed,
            "key": f"{method}-{seed}-abc123", "run": {"wall_time_s": 3.0 + seed},
            "error": {"type": kind, "message": message, "traceback": f"Traceback ...\n{kind}: {message}\n"}}


def write_run(sweep: Path, method: str, seed: int, content: dict[str, Any] | str) -> None:
    folder = sweep / "runs" / DATASET / method / f"seed_{seed}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(content if isinstance(content, str) else json.dumps(content))


REF_AUPRC = {"ae": [0.50, 0.52, 0.54], "vae[combi]": [0.30, None, 0.34]}  # None: the failed seed


def make_reference(sweep: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """ae: 3 seeds (seed 2 with a null precision); vae[combi]: seed 1 failed; broken: failed + unreadable."""
    docs: dict[str, dict[int, dict[str, Any]]] = {}
    for method, values in REF_AUPRC.items():
        for seed, auprc in enumerate(values):
            if auprc is None:
                write_run(sweep, method, seed, failed(method, seed, "ValueError", "loss is nan\nat step 12"))
                continue
            doc = completed(method, seed, auprc, null_precision=(method, seed) == ("ae", 2))
            docs.setdefault(method, {})[seed] = doc
            write_run(sweep, method, seed, doc)
    write_run(sweep, "broken", 0, failed("broken", 0, "RuntimeError", "CUDA out of memory"))
    write_run(sweep, "broken", 1, '{"schema": "normbench.metrics/2", "status": ')  # a torn file
    return docs


@pytest.fixture
def reference(tmp_path: Path) -> tuple[Path, dict[str, dict[int, dict[str, Any]]]]:
    sweep = tmp_path / "reference"
    return sweep, make_reference(sweep)


def row(frame: pd.DataFrame, method: str, test_set: str) -> pd.Series:
    rows = frame[(frame["method"] == method) & (frame["test_set"] == test_set)]
    assert len(rows) == 1
    return rows.iloc[0]


def lookup(doc: dict[str, Any], *path: str) -> float:
    value: Any = doc
    for key in path:
        value = value[key]
    return math.nan if value is None else float(value)


# ---- leaderboard ----------------------------------------------------------------------------------------------
def test_collect_runs_records_unreadable_json_as_failed(reference) -> None:
    sweep, _ = reference
    runs = collect_runs(sweep)
    assert [(r["method"], r["seed"], r["status"]) for r in runs] == [
        ("ae", 0, "completed"), ("ae", 1, "completed"), ("ae", 2, "completed"), ("broken", 0, "failed"),
        ("broken", 1, "failed"), ("vae[combi]", 0, "completed"), ("vae[combi]", 1, "failed"),
        ("vae[combi]", 2, "completed")]
    torn = runs[4]
    assert torn["error"]["type"] == "JSONDecodeError" and "metrics.json" in torn["error"]["message"]
    assert torn["dataset"] == DATASET


def test_flatten_metrics_names_and_threshold_sources() -> None:
    flat = flatten_metrics(tumor_set(0.5, 0))
    assert flat["pixel/auprc"] == 0.5
    assert flat["pixel/best_dice[oracle_test]"] == pytest.approx(0.55)
    assert flat["lesion_size/small/best_dice[oracle_test]"] == pytest.approx(0.25)
    assert flat["lesion_size/large/dice@healthy_fpr@5%"] == pytest.approx(0.5 / 4 + 0.02)
    assert flat["calibrated/healthy_fpr@5%/dice"] == pytest.approx(0.5 / 4)
    assert flat["calibrated/healthy_fpr@1%/threshold"] == 0.37
    assert flat["sample/n_slices"] == 220
    assert "pixel/best_dice" not in flat and "lesion_size/small/best_dice" not in flat
    for name in flat:  # every Dice column states where its threshold comes from
        if "dice" in name and "threshold" not in name:
            assert name.endswith("[oracle_test]") or "healthy_fpr@" in name, name
        assert not any(part in name for part in ("notes", "score_distribution", "edges", "area_pixels", "bins"))
    healthy = flatten_metrics(healthy_set(0))
    assert math.isnan(healthy["pixel/auprc"]) and math.isnan(healthy["calibrated/healthy_fpr@5%/dice"])
    assert healthy["calibrated/healthy_fpr@5%/precision"] == 0.0


def test_means_and_stds_match_numpy(reference) -> None:
    sweep, docs = reference
    board = build_leaderboard(sweep)
    paths = {"pixel/auprc": ("pixel", "auprc"), "pixel/best_dice[oracle_test]": ("pixel", "best_dice"),
             "calibrated/healthy_fpr@5%/dice": ("calibrated", "healthy_fpr@5%", "dice"),
             "calibrated/healthy_fpr@2%/volume_dice_std": ("calibrated", "healthy_fpr@2%", "volume_dice_std"),
             "lesion_size/medium/auprc": ("lesion_size", "bins", "medium", "auprc"),
             "lesion_size/small/best_dice[oracle_test]": ("lesion_size", "bins", "small", "best_dice"),
             "sample/auroc": ("sample", "auroc")}
    for method, seeds in docs.items():
        got = row(board, method, "tumor")
        for name, path in paths.items():
            values = np.array([lookup(doc["test_sets"]["tumor"], *path) for doc in seeds.values()])
            assert got[f"{name}:mean"] == pytest.approx(np.mean(values), rel=1e-12), name
            assert got[f"{name}:std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12), name
        for column in ("wall_time_s", "train_time_s", "test_time_s", "train_images_per_s",
                       "inference_images_per_s"):
            assert got[column] == pytest.approx(np.mean([doc["run"][column] for doc in seeds.values()]))
        assert got["n_parameters"] == 340657 and got["precision"] == "32-true" and str(got["devices"]) == "1"
        assert got["evaluation"] == "default" and got["postprocessing"] == "none"
        assert got["version/torch"] == "2.13.0+cpu" and got["version/pytorch-lightning"] == "2.6.6"
        assert got["version/normbench"] == "0.1.0" and got["schema"] == "normbench.metrics/2"
    assert row(board, "ae", "tumor")["seeds"] == "0;1;2" and row(board, "ae", "tumor")["n_seeds"] == 3
    assert row(board, "vae[combi]", "tumor")["seeds"] == "0;2" and row(board, "vae[combi]", "tumor")["n_seeds"] == 2


def test_null_metrics_stay_nan(reference, tmp_path: Path) -> None:
    sweep, _ = reference
    board = build_leaderboard(sweep)
    ae = row(board, "ae", "tumor")
    assert math.isnan(ae["calibrated/healthy_fpr@1%/precision:mean"])  # null in seed 2: not averaged as 0
    assert math.isnan(ae["calibrated/healthy_fpr@1%/precision:std"])
    assert ae["calibrated/healthy_fpr@2%/precision:mean"] == pytest.approx(np.mean([0.6, 0.62, 0.64]))
    healthy = row(board, "ae", "healthy")
    assert math.isnan(healthy["pixel/auprc:mean"]) and math.isnan(healthy["lesion_size/small/auprc:mean"])
    assert healthy["calibrated/healthy_fpr@1%/precision:mean"] == 0.0
    on_disk = read_leaderboard(write_leaderboard(sweep))
    assert math.isnan(row(on_disk, "ae", "healthy")["pixel/auprc:mean"])
    assert math.isnan(row(on_disk, "ae", "tumor")["calibrated/healthy_fpr@1%/precision:mean"])


def test_ranks_status_and_failures(reference) -> None:
    sweep, _ = reference
    board = build_leaderboard(sweep)
    assert list(board[["method", "test_set"]].itertuples(index=False, name=None)) == [
        ("broken", "-"), ("ae", "healthy"), ("vae[combi]", "healthy"), ("ae", "tumor"), ("vae[combi]", "tumor")]
    assert row(board, "ae", "tumor")["rank"] == 1 and row(board, "vae[combi]", "tumor")["rank"] == 2
    assert board.loc[board["test_set"] == "healthy", "rank"].isna().all()
    assert row(board, "ae", "tumor")["status"] == "completed" and pd.isna(row(board, "ae", "tumor")["failures"])
    vae = row(board, "vae[combi]", "healthy")
    assert vae["status"] == "partial: 1/3 failed"
    assert vae["failures"] == "seed 1: ValueError: loss is nan"
    broken = row(board, "broken", "-")
    assert broken["status"] == "failed" and broken["n_seeds"] == 0 and pd.isna(broken["rank"])
    first, second = broken["failures"].split(" | ")
    assert first == "seed 0: RuntimeError: CUDA out of memory"
    assert second.startswith("seed 1: JSONDecodeError: unreadable metrics.json")
    assert broken["wall_time_s"] == 3.0  # the failed seed that reported one
    assert math.isnan(broken["pixel/auprc:mean"])


def test_single_seed_std_is_nan(tmp_path: Path) -> None:
    write_run(tmp_path, "ae", 0, completed("ae", 0, 0.5))
    got = row(build_leaderboard(tmp_path), "ae", "tumor")
    assert got["pixel/auprc:mean"] == 0.5 and math.isnan(got["pixel/auprc:std"]) and got["rank"] == 1


def test_unknown_primary_metric_is_named(reference) -> None:
    sweep, _ = reference
    with pytest.raises(ValueError, match=r"pixel/aucpr.*available: .*pixel/auprc"):
        build_leaderboard(sweep, primary="pixel/aucpr")
    with pytest.raises(ValueError, match="no such sweep folder"):
        build_leaderboard(sweep / "missing")
    board = build_leaderboard(sweep, primary="pixel/best_dice[oracle_test]")
    assert row(board, "ae", "tumor")["rank"] == 1


def test_rebuild_is_byte_identical(reference) -> None:
    sweep, _ = reference
    path = write_leaderboard(sweep)
    first = path.read_bytes()
    assert write_leaderboard(sweep).read_bytes() == first
    assert leaderboard_csv(build_leaderboard(sweep)).encode() == first
    header = first.split(b"\n", 1)[0].decode().split(",")
    assert header[:8] == ["method", "dataset", "test_set", "rank", "n_seeds", "seeds", "status", "failures"]
    assert header[8:14] == ["beats_random", "p_vs_random", "pixel/auroc:mean", "pixel/auroc:std",
                            "pixel/auroc:ci_low", "pixel/auroc:ci_high"]
    dice = header.index("calibrated/healthy_fpr@5%/dice:std")
    assert header[dice + 1:dice + 3] == ["calibrated/healthy_fpr@5%/dice:ci_low",
                                         "calibrated/healthy_fpr@5%/dice:ci_high"]
    assert "calibrated/healthy_fpr@5%/precision:ci_low" not in header  # intervals only where counts give them


def _write_many(sweep: str, times: int) -> None:
    for _ in range(times):
        write_leaderboard(sweep)


def test_concurrent_writers_leave_a_valid_csv(reference) -> None:
    sweep, _ = reference
    expected = leaderboard_csv(build_leaderboard(sweep))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(sweep), 20)) for _ in range(2)]
    for worker in workers:
        worker.start()
    path, reads = sweep / "leaderboard.csv", 0
    while any(worker.is_alive() for worker in workers):  # a reader never sees a partial file
        if path.exists():
            assert path.read_text() == expected
            reads += 1
        time.sleep(0.02)
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    assert path.read_text() == expected
    assert reads > 0
    leftovers = {p.name for p in sweep.iterdir()} - {"runs", "leaderboard.csv", "leaderboard.csv.lock"}
    assert not leftovers


# ---- compare --------------------------------------------------------------------------------------------------
NEW_AUPRC = {"ae": [0.56, 0.58], "fancy": [0.40, 0.42, 0.44]}


@pytest.fixture
def comparison(reference, tmp_path: Path) -> dict[str, Any]:
    sweep, docs = reference
    new = tmp_path / "new"
    new_docs: dict[str, dict[int, dict[str, Any]]] = {}
    for method, values in NEW_AUPRC.items():
        for seed, auprc in enumerate(values):
            new_docs.setdefault(method, {})[seed] = doc = completed(method, seed, auprc)
            write_run(new, method, seed, doc)
    return {"ref_csv": write_leaderboard(sweep), "ref": docs, "new_sweep": new, "new": new_docs}


def delta_row(deltas: pd.DataFrame, new: str, ref: str, metric: str, test_set: str = "tumor") -> pd.Series:
    rows = deltas[(deltas["new_method"] == new) & (deltas["ref_method"] == ref) & (deltas["metric"] == metric)
                  & (deltas["test_set"] == test_set)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_compare_deltas_and_ranks(comparison, tmp_path: Path) -> None:
    result = compare(comparison["new_sweep"], comparison["ref_csv"], out_dir=tmp_path / "out")
    for new, ref in (("fancy", "ae"), ("fancy", "vae[combi]"), ("ae", "ae"), ("ae", "vae[combi]")):
        for metric, path in (("pixel/auprc", ("pixel", "auprc")),
                             ("lesion_size/small/best_dice[oracle_test]", ("lesion_size", "bins", "small",
                                                                           "best_dice"))):
            new_values = [lookup(d["test_sets"]["tumor"], *path) for d in comparison["new"][new].values()]
            ref_values = [lookup(d["test_sets"]["tumor"], *path) for d in comparison["ref"][ref].values()]
            got = delta_row(result.deltas, new, ref, metric)
            assert got["new_mean"] == pytest.approx(np.mean(new_values), rel=1e-12)
            assert got["new_std"] == pytest.approx(np.std(new_values, ddof=1), rel=1e-12)
            assert got["ref_mean"] == pytest.approx(np.mean(ref_values), rel=1e-12)
            assert got["delta"] == pytest.approx(np.mean(new_values) - np.mean(ref_values), rel=1e-12)
            assert bool(got["same_method"]) == (new == ref)
    assert delta_row(result.deltas, "fancy", "ae", "pixel/auprc")["delta"] == pytest.approx(0.42 - 0.52)
    assert delta_row(result.deltas, "ae", "ae", "pixel/auprc")["delta"] == pytest.approx(0.57 - 0.52)
    assert math.isnan(delta_row(result.deltas, "fancy", "ae", "pixel/auprc", "healthy")["delta"])
    assert "broken" not in set(result.deltas["ref_method"])  # no completed numbers to compare with

    ranks = {(r.test_set, r.method): r.rank for r in result.ranks.itertuples(index=False)}
    assert ranks == {("tumor", "fancy"): "2 of 3", ("tumor", "ae"): "1 of 2",  # a rerun does not rank against itself
                     ("healthy", "fancy"): "n/a", ("healthy", "ae"): "n/a"}
    rerun = result.ranks[(result.ranks["method"] == "ae") & (result.ranks["test_set"] == "tumor")].iloc[0]
    assert rerun["same_method_delta"] == pytest.approx(0.05)

    markdown = result.to_markdown()
    for text in ("fancy", "ae", "vae[combi]", "2 of 3", "1 of 2", "pixel/auprc", "rerun"):
        assert text in markdown
    for name in ("compare.csv", "compare.md", "compare.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "compare.md").read_text() == markdown
    saved = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert len(saved) == len(result.deltas)


def test_compare_reads_a_new_leaderboard_csv(comparison) -> None:
    from_sweep = compare(comparison["new_sweep"], comparison["ref_csv"])
    from_csv = compare(write_leaderboard(comparison["new_sweep"]), comparison["ref_csv"])
    pd.testing.assert_frame_equal(from_csv.deltas, from_sweep.deltas)
    assert list(from_csv.ranks["rank"]) == list(from_sweep.ranks["rank"])


def test_compare_errors_name_the_file(comparison, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "reference.csv"
    with pytest.raises(ValueError, match=r"nowhere/reference\.csv"):
        compare(comparison["new_sweep"], missing)
    wrong = tmp_path / "not_a_board.csv"
    wrong.write_text("name,score\nae,0.5\n")
    with pytest.raises(ValueError, match=r"not_a_board\.csv.*not a leaderboard.*method"):
        compare(comparison["new_sweep"], wrong)
    other = tmp_path / "other"
    write_run(other, "ae", 0, completed("ae", 0, 0.5))
    board = read_leaderboard(write_leaderboard(other))
    board["dataset"] = "brats"
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text(leaderboard_csv(board))
    with pytest.raises(ValueError, match=r"share no dataset / test set.*brats/tumor"):
        compare(comparison["new_sweep"], elsewhere)


def test_score_variants_become_their_own_entries_and_share_failures(tmp_path: Path) -> None:
    sweep = tmp_path / "variants"
    for seed, (a, b) in enumerate([(0.2, 0.6), (0.4, 0.8)]):
        run = completed("vae", seed, a)
        run["primary_variant"] = "combi"
        run["variants"] = {"combi": {"test_sets": run["test_sets"], "calibration": run["calibration"]},
                           "rec": {"test_sets": completed("vae", seed, b)["test_sets"],
                                   "calibration": run["calibration"]}}
        write_run(sweep, "vae", seed, run)
    write_run(sweep, "vae", 2, failed("vae", 2, "NonFiniteLossError", "loss is NaN"))
    board = build_leaderboard(sweep)
    assert sorted(set(board["method"])) == ["vae[combi]", "vae[rec]"]
    for method, values in (("vae[combi]", [0.2, 0.4]), ("vae[rec]", [0.6, 0.8])):
        tumor = row(board, method, "tumor")
        assert tumor["pixel/auprc:mean"] == pytest.approx(np.mean(values))
        assert tumor["n_seeds"] == 2 and tumor["status"] == "partial: 1/3 failed"
        assert "NonFiniteLossError" in tumor["failures"]
    assert row(board, "vae[rec]", "tumor")["rank"] == 1


def test_primary_fallbacks_rank_each_test_set_by_its_first_defined_metric(reference) -> None:
    sweep, _ = reference
    plain = build_leaderboard(sweep, "pixel/auprc")
    fallback = build_leaderboard(sweep, "pixel/auprc,sample/auroc")
    tumor = fallback["test_set"] == "tumor"
    assert fallback.loc[tumor, "rank"].tolist() == plain.loc[plain["test_set"] == "tumor", "rank"].tolist()
    frame = pd.DataFrame({"method": ["a", "b"], "pixel/auprc:mean": [math.nan, math.nan],
                          "sample/auroc:mean": [0.7, 0.9]})
    assert group_primary(frame, "pixel/auprc,sample/auroc") == "sample/auroc"
    assert group_primary(frame.assign(**{"pixel/auprc:mean": [0.1, math.nan]}), "pixel/auprc,sample/auroc") == \
        "pixel/auprc"
    with pytest.raises(ValueError, match="not among the metrics"):
        build_leaderboard(sweep, "pixel/auprc,no/such")


def _generative(ssim_max: float, ssim_mean: float, ssim_min: float) -> dict[str, Any]:
    return {"ssim_max": ssim_max, "ssim_mean": ssim_mean, "ssim_min": ssim_min, "n_samples": 64,
            "n_reference": 200, "reference": "test set 'healthy'", "protocol": {"window": "gaussian 11 x 11"}}


def test_generative_columns_are_run_level_means_over_completed_seeds(tmp_path: Path) -> None:
    sweep = tmp_path / "gan"
    for seed, values in enumerate([(0.70, 0.50, 0.30), (0.80, 0.60, 0.20)]):
        run = completed("gan", seed, 0.3 + 0.1 * seed)
        run["generative"] = _generative(*values)
        run["primary_variant"] = "izif"  # a method with score variants: one result per run, on every variant
        run["variants"] = {name: {"test_sets": run["test_sets"], "calibration": run["calibration"]}
                           for name in ("izif", "ziz")}
        write_run(sweep, "gan", seed, run)
    write_run(sweep, "gan", 2, failed("gan", 2, "NonFiniteLossError", "critic loss is NaN"))
    write_run(sweep, "ae", 0, completed("ae", 0, 0.5))
    board = build_leaderboard(sweep)
    expected = {"generative/ssim_max": 0.75, "generative/ssim_mean": 0.55, "generative/ssim_min": 0.25}
    for method in ("gan[izif]", "gan[ziz]"):
        for test_set in ("healthy", "tumor"):
            got = row(board, method, test_set)
            for column, value in expected.items():
                assert got[column] == pytest.approx(value, abs=1e-12), (method, test_set, column)
    ae = row(board, "ae", "tumor")
    assert all(math.isnan(ae[column]) for column in expected)
    header = list(board.columns)
    assert header.index("inference_images_per_s") + 1 == header.index("generative/ssim_max")
    on_disk = read_leaderboard(write_leaderboard(sweep))
    assert row(on_disk, "gan[izif]", "tumor")["generative/ssim_min"] == pytest.approx(0.25)
    assert math.isnan(row(on_disk, "ae", "tumor")["generative/ssim_min"])


# ---- subject bootstrap: intervals, tests against random, compare verdicts -------------------------------------
SUBJECTS = tuple(f"sub{i}" for i in range(6))


def subject_counts(rng: np.random.Generator, shift: float, lesion: bool = True) -> SubjectCounts:
    """Six subjects' counts over 60 bins: negatives around bin 25, lesion pixels ``shift`` bins higher."""
    histogram = np.zeros((len(SUBJECTS), 2, 60), dtype=np.int64)
    calibrated = np.zeros((len(SUBJECTS), len(THRESHOLDS), 4), dtype=np.int64)
    for s in range(len(SUBJECTS)):
        negatives = np.clip(rng.normal(25, 6, 400).round(), 0, 59).astype(int)
        positives = np.clip(rng.normal(25 + shift, 6, 40 if lesion else 0).round(), 0, 59).astype(int)
        histogram[s, 0] = np.bincount(negatives, minlength=60)
        histogram[s, 1] = np.bincount(positives, minlength=60)
        for t, cut in enumerate((40, 36, 32)):
            tp, fp = int(np.sum(positives >= cut)), int(np.sum(negatives >= cut))
            calibrated[s, t] = [tp, fp, len(positives) - tp, len(negatives) - fp]
    return SubjectCounts.from_histogram(SUBJECTS, histogram, list(THRESHOLDS), calibrated, {})


SHIFTS = {"random": 0.0, "good": 12.0, "noise": 0.0}


def write_counted_sweep(sweep: Path, methods: dict[str, float] = SHIFTS, seeds: int = 3,
                        ) -> dict[str, list[dict[tuple[str | None, str], SubjectCounts]]]:
    """Runs whose ``subject_counts.npz`` hold ``healthy`` and ``tumor`` counts (lesion pixels ``shift`` bins up)."""
    rng = np.random.default_rng(11)
    written: dict[str, list[dict[tuple[str | None, str], SubjectCounts]]] = {}
    for method, shift in methods.items():
        for seed in range(seeds):
            doc = completed(method, seed, 0.3 + shift / 100 + 0.01 * seed)
            write_run(sweep, method, seed, doc)
            counts = {(None, "healthy"): subject_counts(rng, 0.0, lesion=False),
                      (None, "tumor"): subject_counts(rng, shift)}
            write_subject_counts(sweep / "runs" / DATASET / method / f"seed_{seed}" / "subject_counts.npz", counts,
                                 doc["key"])
            written.setdefault(method, []).append(counts)
    return written


def test_leaderboard_intervals_and_paired_tests_against_random(tmp_path: Path) -> None:
    written = write_counted_sweep(tmp_path)
    board = build_leaderboard(tmp_path)
    replicates = {method: entry_replicates([seed[None, "tumor"] for seed in seeds], method)
                  for method, seeds in written.items()}
    for method in SHIFTS:
        got = row(board, method, "tumor")
        for name in ("pixel/auroc", "pixel/auprc", "calibrated/healthy_fpr@5%/dice"):
            low, high = percentile_interval(replicates[method][name])
            assert (got[f"{name}:ci_low"], got[f"{name}:ci_high"]) == pytest.approx((low, high), abs=1e-12), name
            assert low < high
        healthy = row(board, method, "healthy")
        assert math.isnan(healthy["pixel/auroc:ci_low"]) and healthy["beats_random"] == "n.a."
        assert math.isnan(healthy["p_vs_random"])
    good, noise = row(board, "good", "tumor"), row(board, "noise", "tumor")
    assert good["beats_random"] == "true" and good["p_vs_random"] == pytest.approx(1 / 1001)
    expected = paired_p_value(replicates["noise"]["pixel/auprc"], replicates["random"]["pixel/auprc"])
    assert noise["p_vs_random"] == pytest.approx(expected, abs=1e-12) and 0.05 <= expected < 1
    assert noise["beats_random"] == "false"
    assert row(board, "random", "tumor")["beats_random"] == "n.a."
    on_disk = read_leaderboard(write_leaderboard(tmp_path))
    assert list(on_disk.loc[on_disk["test_set"] == "tumor", "beats_random"]) == list(
        board.loc[board["test_set"] == "tumor", "beats_random"])
    assert set(on_disk["beats_random"]) == {"true", "false", "n.a."}
    assert row(on_disk, "good", "tumor")["pixel/auprc:ci_high"] == good["pixel/auprc:ci_high"]


def test_rank_metric_without_counts_or_without_random_is_not_available(tmp_path: Path) -> None:
    write_counted_sweep(tmp_path / "sweep")
    sample_level = build_leaderboard(tmp_path / "sweep", primary="sample/auroc")  # no per-subject counts
    assert set(sample_level["beats_random"]) == {"n.a."} and sample_level["p_vs_random"].isna().all()
    write_counted_sweep(tmp_path / "no_random", {"good": 12.0, "noise": 0.0})
    board = build_leaderboard(tmp_path / "no_random")
    assert set(board["beats_random"]) == {"n.a."}
    assert np.isfinite(row(board, "good", "tumor")["pixel/auroc:ci_low"])  # intervals need no random


def test_runs_without_or_with_stale_subject_counts_have_no_intervals(tmp_path: Path) -> None:
    write_counted_sweep(tmp_path)
    (tmp_path / "runs" / DATASET / "noise" / "seed_1" / "subject_counts.npz").unlink()  # an older run
    run = tmp_path / "runs" / DATASET / "good" / "seed_2"
    doc = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**doc, "key": "rerun-with-another-config"}))  # stale npz
    board = build_leaderboard(tmp_path)
    for method in ("noise", "good"):
        got = row(board, method, "tumor")
        assert math.isnan(got["pixel/auprc:ci_low"]) and math.isnan(got["calibrated/healthy_fpr@1%/dice:ci_high"])
        assert got["beats_random"] == "n.a." and math.isnan(got["p_vs_random"])
        assert np.isfinite(got["pixel/auprc:mean"])  # the seed means are still there
    assert np.isfinite(row(board, "random", "tumor")["pixel/auprc:ci_low"])


def test_score_variants_read_their_own_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for method, shifts in (("random", {None: 0.0}), ("vae", {"rec": 12.0, "kl": 0.0})):
        doc = completed(method, 0, 0.3)
        if method == "vae":
            doc["primary_variant"] = "rec"
            doc["variants"] = {name: {"test_sets": doc["test_sets"], "calibration": doc["calibration"]}
                               for name in shifts}
        write_run(tmp_path, method, 0, doc)
        write_subject_counts(tmp_path / "runs" / DATASET / method / "seed_0" / "subject_counts.npz",
                             {(variant, "tumor"): subject_counts(rng, shift) for variant, shift in shifts.items()},
                             doc["key"])
    board = build_leaderboard(tmp_path)
    rec, kl = row(board, "vae[rec]", "tumor"), row(board, "vae[kl]", "tumor")
    assert rec["beats_random"] == "true" and kl["beats_random"] == "false"
    assert rec["pixel/auroc:ci_low"] > kl["pixel/auroc:ci_high"]
    assert math.isnan(row(board, "vae[rec]", "healthy")["pixel/auroc:ci_low"])  # no counts for that test set


def test_compare_verdicts_from_overlapping_intervals(tmp_path: Path) -> None:
    write_counted_sweep(tmp_path / "reference")
    write_counted_sweep(tmp_path / "new", {"good": 13.0, "better": 30.0})
    reference = write_leaderboard(tmp_path / "reference")
    result = compare(tmp_path / "new", reference)
    deltas = result.deltas
    for r in deltas.itertuples(index=False):
        intervals = (r.new_ci_low, r.new_ci_high, r.ref_ci_low, r.ref_ci_high)
        if any(pd.isna(v) for v in intervals):
            assert r.verdict == "", (r.metric, r.new_method, r.ref_method)
        elif r.new_ci_low > r.ref_ci_high:
            assert r.verdict == "better"
        elif r.new_ci_high < r.ref_ci_low:
            assert r.verdict == "worse"
        else:
            assert r.verdict == "within noise"
    tumor = deltas[(deltas["test_set"] == "tumor") & (deltas["metric"] == "pixel/auroc")]
    verdicts = {(r.new_method, r.ref_method): r.verdict for r in tumor.itertuples(index=False)}
    assert verdicts[("good", "good")] == "within noise"  # a rerun: same method, similar data
    assert verdicts[("better", "random")] == "better" and verdicts[("good", "random")] == "better"
    assert verdicts[("better", "good")] == "better"
    assert set(deltas.loc[deltas["metric"] == "sample/auroc", "verdict"]) == {""}  # no intervals there
    counted = deltas["verdict"].value_counts()
    assert result.summary().startswith(f"{counted['within noise']} of {int(counted.drop('').sum())} differences")
    markdown = result.to_markdown()
    assert re.search(r"\| delta +\| verdict +\|", markdown) and re.search(r"\| better +\|", markdown)
    assert result.summary() in markdown
    saved = pd.read_csv(result.save(tmp_path / "out")[0], keep_default_na=False)
    assert list(saved["verdict"]) == list(deltas["verdict"])
