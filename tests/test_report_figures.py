"""The report's figures at many entries: forest plot rows, curve entries, qualitative slices, interval tables.

The leaderboards are constructed (with the bootstrap columns ``:ci_low`` / ``:ci_high`` and ``beats_random``, and
without them for the fallback); :func:`write_sweep` also writes run folders with ``qualitative_<set>.npz`` files.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.naming import qualitative_arrays_name
from benchmark.qualitative import (
    LESION_CRITERION,
    ROI_CRITERION,
    QualitativeSlices,
    load_qualitative,
    map_limits,
    save_qualitative,
    select_slices,
)
from benchmark.report import curve_entries, leaderboard_table, write_report
from benchmark.report_forest import calibrated_dice, forest_metrics, forest_rows, plot_forest
from benchmark.report_qualitative import pages

DATASET = "synth"
DICE = "calibrated/healthy_fpr@5%/dice"
METRICS = ("pixel/auprc", "pixel/auroc", DICE)
VARIANTS = ("rec", "grad_kl", "grad_elbo", "combi")


def entry_names(n: int) -> list[str]:
    """``random``, ``intensity`` and ``n - 2`` method names of realistic lengths (some with a variant)."""
    names = ["random", "intensity"]
    for i in range(n - 2):
        base = f"method{i:02d}" + ("_mlp" if i % 3 == 0 else "")
        names.append(f"{base}[{VARIANTS[i % 4]}]" if i % 2 else base)
    return names[:n]


def board(n: int, intervals: bool = True, seed: int = 0, test_sets: tuple[str, ...] = ("tumor",)) -> pd.DataFrame:
    """A leaderboard of ``n`` entries on ``test_sets`` (plus a ``healthy`` set without pixel metrics); every
    fourth method does not beat random. ``intervals=False``: the columns of a leaderboard from before the
    subject bootstrap (no ``:ci_*``, no ``beats_random`` / ``p_vs_random``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for test_set in test_sets:
        for i, method in enumerate(entry_names(n)):
            row = {"method": method, "dataset": DATASET, "test_set": test_set, "n_seeds": 3, "seeds": "0;1;2",
                   "status": "completed", "failures": ""}
            row["beats_random"] = "n.a." if method == "random" else ("false" if i % 4 == 1 else "true")
            row["p_vs_random"] = np.nan if method == "random" else (0.3 if i % 4 == 1 else 0.001)
            for metric, scale in zip(METRICS, (0.2, 1.0, 0.3), strict=True):
                mean = float(rng.uniform(0.05, 0.9) * scale)
                row.update({f"{metric}:mean": mean, f"{metric}:std": 0.01 + 0.02 * rng.random(),
                            f"{metric}:ci_low": mean - 0.03 * scale, f"{metric}:ci_high": mean + 0.04 * scale})
            row["sample/auroc:mean"], row["sample/auroc:std"] = rng.uniform(0.4, 0.9), 0.02
            rows.append(row)
        for method in entry_names(n):
            rows.append({"method": method, "dataset": DATASET, "test_set": "healthy", "n_seeds": 3,
                         "seeds": "0;1;2", "status": "completed", "failures": "", "beats_random": "n.a."})
    frame = pd.DataFrame(rows)
    for test_set in test_sets:
        block = frame["test_set"] == test_set
        frame.loc[block, "rank"] = frame.loc[block, "pixel/auprc:mean"].rank(ascending=False, method="min")
    if not intervals:
        frame = frame.drop(columns=[c for c in frame.columns if c.endswith((":ci_low", ":ci_high"))]
                           + ["beats_random", "p_vs_random"])
    return frame


# ---- forest plots ---------------------------------------------------------------------------------------------------
def test_forest_rows_follow_the_primary_mean_and_mark_entries_that_do_not_beat_random():
    frame = board(20)
    block = frame[frame["test_set"] == "tumor"]
    rows = forest_rows(block, "pixel/auprc", list(METRICS))
    expected = block.sort_values("pixel/auprc:mean", ascending=False)["method"].tolist()
    assert [row.method for row in rows] == expected  # best on top
    beats = dict(zip(block["method"], block["beats_random"], strict=True))
    for row in rows:
        assert row.hollow == (beats[row.method] == "false")
        assert row.label.endswith(" †") == (beats[row.method] == "false")
        assert (row.color == "0.6") == row.hollow
    assert {row.kind for row in rows if row.method in ("random", "intensity")} == {"reference", "baseline"}
    assert {row.marker for row in rows if row.kind != "method"} == {"s"}
    top = block.set_index("method").loc[rows[0].method]
    value = rows[0].values["pixel/auprc"]
    assert value.kind == "ci" and (value.low, value.high) == (top["pixel/auprc:ci_low"], top["pixel/auprc:ci_high"])


def test_forest_falls_back_to_seed_std_without_bootstrap_columns(tmp_path):
    block = board(8, intervals=False).query("test_set == 'tumor'")
    rows = forest_rows(block, "pixel/auprc", list(METRICS))
    assert not any(row.hollow or "†" in row.label for row in rows)
    for row, (_, source) in zip(rows, block.sort_values("pixel/auprc:mean", ascending=False).iterrows(),
                                strict=True):
        value = row.values["pixel/auroc"]
        assert value.kind == "std"
        assert value.low == pytest.approx(source["pixel/auroc:mean"] - source["pixel/auroc:std"])
    assert plot_forest(rows, list(METRICS), "fallback", tmp_path / "forest.png")
    assert (tmp_path / "forest.png").stat().st_size > 0


def test_forest_panels_take_the_boards_calibrated_dice_and_the_rank_metric_first():
    block = board(6).query("test_set == 'tumor'").rename(columns=lambda c: c.replace("@5%", "@10%"))
    assert calibrated_dice(list(block.columns)) == "calibrated/healthy_fpr@10%/dice"
    panels = forest_metrics(block, "sample/auroc", [*METRICS, "lesion_size/small/auprc"])
    assert panels == ["sample/auroc", "pixel/auprc", "pixel/auroc", "calibrated/healthy_fpr@10%/dice"]


# ---- curves ---------------------------------------------------------------------------------------------------------
def test_curves_keep_the_top_k_and_the_baselines():
    block = board(20).query("test_set == 'tumor'")
    ranked = block.sort_values("pixel/auprc:mean", ascending=False)["method"].tolist()
    methods = [m for m in ranked if m not in ("random", "intensity")]
    without = set(ranked) - {methods[1]}  # the second-best has no curves.json: the next one moves up
    entries = curve_entries(block, without, "pixel/auprc", k=5)
    assert entries == [methods[0], *methods[2:6], "random", "intensity"]
    assert curve_entries(block, set(methods[:3]), "pixel/auprc") == methods[:3]  # no baseline curves: none added


# ---- tables ---------------------------------------------------------------------------------------------------------
def test_tables_show_intervals_and_mark_entries_that_do_not_beat_random():
    frame = board(8)
    table = leaderboard_table(frame, "pixel/auprc")
    tumor = frame[frame["test_set"] == "tumor"]
    row = tumor[(tumor["beats_random"] == "false") & (tumor["method"] != "intensity")].iloc[0]
    cell = f"{row['pixel/auprc:mean']:.3f} [{row['pixel/auprc:ci_low']:.3f}, {row['pixel/auprc:ci_high']:.3f}]"
    line = next(line for line in table.splitlines() if line.startswith(f"| {row['method']} †"))
    assert cell in line and "±" not in line.split("|")[3]
    assert table.rstrip().endswith("† does not beat random (paired subject bootstrap, p ≥ 0.05).")
    old = leaderboard_table(board(8, intervals=False), "pixel/auprc")
    assert "†" not in old and "[" not in old.replace("[grad", "").replace("[rec", "").replace("[combi", "")
    assert "±" in old


# ---- qualitative slices ---------------------------------------------------------------------------------------------
def test_slice_selection_takes_the_most_lesion_pixels_ties_by_index():
    rng = np.random.default_rng(1)
    masks = np.zeros((30, 1, 16, 16), dtype=np.uint8)
    areas = rng.integers(0, 6, 30) ** 2  # many ties
    for i, area in enumerate(areas):
        masks[i, 0].flat[rng.choice(256, area, replace=False)] = 1
    rois = np.ones_like(masks)
    indices, criterion = select_slices(masks, rois, k=4)
    reference = np.argsort(-areas, kind="stable")[:4]
    assert criterion == LESION_CRITERION and indices.tolist() == reference.tolist()
    assert all(areas[a] > areas[b] or (areas[a] == areas[b] and a < b) for a, b in itertools.pairwise(indices))
    healthy = np.zeros_like(masks)
    roi_areas = np.array([int(r) for r in rng.integers(10, 200, 30)])
    rois = np.zeros_like(masks)
    for i, area in enumerate(roi_areas):
        rois[i, 0].flat[:area] = 1
    indices, criterion = select_slices(healthy, rois, k=4)
    assert criterion == ROI_CRITERION and indices.tolist() == np.argsort(-roi_areas, kind="stable")[:4].tolist()
    assert select_slices(healthy[:2], rois[:2], k=4)[0].tolist() == np.argsort(-roi_areas[:2], kind="stable").tolist()


def test_slice_selection_shows_each_subjects_best_slice_first():
    areas = np.array([5, 9, 7, 3, 8, 1])  # subjects a a a b b c: best slices 1 (a), 4 (b), 5 (c)
    masks = np.zeros((6, 1, 4, 4), dtype=np.uint8)
    for i, area in enumerate(areas):
        masks[i, 0].flat[:area] = 1
    subjects = np.array(["a", "a", "a", "b", "b", "c"])
    indices, _ = select_slices(masks, np.ones_like(masks), k=5, subjects=subjects)
    assert indices.tolist() == [1, 4, 5, 2, 0]  # one per subject by count, then the rest by count


def test_qualitative_arrays_round_trip_and_per_entry_scaling(tmp_path):
    rng = np.random.default_rng(2)
    n, size = 12, 8
    masks = (rng.random((n, 1, size, size)) > 0.8).astype(np.uint8)
    shown = QualitativeSlices.from_split("tumor", rng.random((n, 2, size, size)).astype(np.float32), masks,
                                         np.ones_like(masks), np.array([f"s{i // 4}" for i in range(n)]),
                                         np.arange(n) % 4, k=3)
    shown.maps = {None: rng.random((3, size, size)).astype(np.float32) * 10}
    save_qualitative(tmp_path / "q.npz", shown)
    back = load_qualitative(tmp_path / "q.npz", "tumor")
    assert back is not None and back.reconstruction is None and list(back.maps) == [None]
    assert np.array_equal(back.masks, masks[back.indices, 0]) and back.images.shape == (3, size, size)
    assert back.keys == [(f"s{i // 4}", i % 4) for i in back.indices]
    low, high = map_limits(back.maps[None], back.rois)
    assert low == 0.0 and high == pytest.approx(np.percentile(back.maps[None], 99))
    assert load_qualitative(tmp_path / "missing.npz", "tumor") is None
    (tmp_path / "torn.npz").write_bytes((tmp_path / "q.npz").read_bytes()[:60])
    assert load_qualitative(tmp_path / "torn.npz", "tumor") is None


def test_entries_split_into_even_pages():
    assert [len(p) for p in pages(list(range(40)))] == [20, 20]
    assert [len(p) for p in pages(list(range(25)))] == [12, 13]
    assert [len(p) for p in pages(list(range(7)))] == [7]


# ---- a constructed sweep: the whole report --------------------------------------------------------------------------
def _folder(method: str) -> tuple[str, str | None]:
    """Run folder name and variant of an entry (``vae[rec]`` -> ``vae``, ``rec``)."""
    name, _, variant = method.partition("[")
    return name, (variant.rstrip("]") or None)


def write_sweep(root: Path, n: int, intervals: bool = True, size: int = 24, k: int = 4) -> Path:
    """A sweep folder of ``n`` entries with runs (metrics.json, curves.json, qualitative npz on tumor and
    healthy); methods with variants share one run folder and npz."""
    frame = board(n, intervals)
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "leaderboard.csv", index=False)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:size, :size]
    roi = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.3) ** 2).astype(np.uint8)
    dataset = {}
    for test_set in ("tumor", "healthy"):
        n_slices = 10
        masks = np.zeros((n_slices, 1, size, size), dtype=np.uint8)
        if test_set == "tumor":
            for i in range(n_slices):
                r = 1 + i % 5
                masks[i, 0] = ((yy - size / 2 - 3) ** 2 + (xx - size / 2) ** 2 < r ** 2) * roi
        images = (rng.random((n_slices, 1, size, size)) * 0.3 + 0.4 + 0.5 * masks) * roi
        dataset[test_set] = (images.astype(np.float32), masks, np.broadcast_to(roi, masks.shape).copy())
    runs: dict[str, list[str | None]] = {}
    for method in entry_names(n):
        name, variant = _folder(method)
        runs.setdefault(name, []).append(variant)
    for name, variants in runs.items():
        run = root / "runs" / DATASET / name / "seed_0"
        (run / "figures").mkdir(parents=True)
        result = {"tumor": {"pixel": {"auroc": 0.6, "auprc": 0.1, "n_lesion_pixels": 50, "n_roi_pixels": 900}},
                  "healthy": {"pixel": {"n_lesion_pixels": 0, "n_roi_pixels": 900}}}
        record = {"status": "completed", "method": name, "dataset": DATASET, "seed": 0, "test_sets": result}
        if variants != [None]:
            record["variants"] = {v: {"test_sets": result} for v in variants}
        (run / "metrics.json").write_text(json.dumps(record))
        grid = np.linspace(0.0, 1.0, 21)
        curves = {}
        for v in variants:
            power = float(rng.uniform(0.2, 1.2))
            curves[v] = {"tumor": {"roc": {"fpr": grid.tolist(), "tpr": (grid ** power).tolist()},
                                   "pr": {"recall": grid.tolist(), "precision": (0.05 + 0.9 * (1 - grid) ** (1 / power)
                                                                                 ).tolist()}}, "healthy": {}}
        (run / "curves.json").write_text(json.dumps({"pixel": curves[variants[0]], "variants": curves}))
        for test_set, (images, masks, rois) in dataset.items():
            shown = QualitativeSlices.from_split(test_set, images, masks, rois,
                                                 np.array([f"sub-{test_set}-{i // 5}" for i in range(10)]),
                                                 np.arange(10) % 5, k)
            shown.maps = {v: rng.random(shown.images.shape).astype(np.float32) + 2 * shown.masks
                          for v in variants}
            shown.reconstruction = None if "_mlp" in name else shown.images * 0.9
            save_qualitative(run / "figures" / qualitative_arrays_name(test_set), shown)
    return root


def test_report_of_many_entries_pages_the_qualitative_slices(tmp_path):
    root = write_sweep(tmp_path / "many", 40)
    text = write_report(root).read_text()
    figures = root / "figures"
    assert (figures / "forest_synth_tumor.png").is_file() and not (figures / "forest_synth_healthy.png").exists()
    for test_set in ("tumor", "healthy"):
        assert (figures / f"qualitative_synth_{test_set}_1.png").is_file()
        assert (figures / f"qualitative_synth_{test_set}_2.png").is_file()
        assert f"qualitative_synth_{test_set}_2.png" in text
    assert "bars_" not in text and "older runs" not in text
    assert "**tumor**: the 4 slices with the most lesion pixels." in text
    assert "**healthy**: the 4 slices with the most roi area (no lesion masks)." in text


def test_report_of_old_run_folders_links_their_grids(tmp_path):
    import matplotlib.pyplot as plt

    root = write_sweep(tmp_path / "old", 4, intervals=False)
    for npz in root.glob("runs/*/*/seed_0/figures/*.npz"):
        npz.unlink()
    plt.imsave(root / "runs" / DATASET / "random" / "seed_0" / "figures" / "qualitative_tumor.png",
               np.zeros((8, 32)), cmap="gray")
    text = write_report(root).read_text()
    assert "older runs" in text and "runs/synth/random/seed_0/figures/qualitative_tumor.png" in text
    assert "qualitative_synth_tumor" not in text
    assert "±" in text and "†" not in text.split("## Dataset")[1]
