"""The evaluation engine (``benchmark.metrics``) against independent numpy / scikit-learn / scipy references.

Every reference below is computed directly on the same synthetic arrays (thresholding, counting, sorting); none
of them calls the engine's own helpers (histograms, bins, curves, post-processing). Anomaly maps are rounded to a
grid of 1/64 below 16, so distinct values fall in distinct histogram bins and binned results must be exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from benchmark.metrics import (
    EvaluationSettings,
    HealthyCalibration,
    MethodOutputError,
    PostProcessing,
    SetLayout,
    add_vs_healthy,
    check_output,
)
from benchmark.metrics.evaluator import TestSetEvaluator as SetEvaluator  # not collected as a test class
from benchmark.metrics.evaluator import size_edges
from benchmark.metrics.volumes import VolumeAssembler
from datamodules.base import SubjectShardSampler
from lightning_modules.base import AnomalyOutput

H = W = 16
GRID = 64  # map values are multiples of 1 / GRID (exact in float32, one value per histogram bin below 16)
# Dataset order is subject-contiguous; the names do not sort in dataset order (SetLayout sorts them).
NAMES = ("delta", "alpha", "echo", "bravo", "charlie")
COUNTS = (3, 7, 4, 6, 5)
THRESHOLDS = {
    "healthy_fpr@1%": 48.5 / GRID,  # between grid values
    "healthy_fpr@2%": 40 / GRID,  # exactly on a grid value: flag is ``>=``
    "healthy_fpr@5%": 0.0,  # flags every roi pixel, zeros included
    "nothing": 100.0,  # above every value: nothing flagged, precision undefined
}


# ---- synthetic data -------------------------------------------------------------------------------------------
def make_set(seed: int, names: Sequence[str] = NAMES, counts: Sequence[int] = COUNTS,
             lesion_subjects: Sequence[int] = (0, 2, 3), grid: bool = True, size: int = H) -> dict[str, Any]:
    """Subject-contiguous slices with roi, lesion masks, anomaly maps, labels and slice scores."""
    rng = np.random.default_rng(seed)
    subjects = [name for name, n in zip(names, counts, strict=True) for _ in range(n)]
    slices = np.concatenate([np.arange(n) for n in counts]).astype(np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    n = len(subjects)
    roi = np.zeros((n, size, size), bool)
    for i in range(n):
        border = int(rng.integers(1, 4))
        roi[i, border:size - border, border:size - border] = True
    roi &= rng.random(roi.shape) > 0.03  # a few holes
    mask = np.zeros_like(roi)
    for i in range(n):
        if owner[i] in lesion_subjects and rng.random() < 0.75:
            h, w = (int(v) for v in rng.integers(1, 8, 2))
            y, x = (int(v) for v in rng.integers(2, size - 2 - 7, 2))
            mask[i, y:y + h, x:x + w] = True
    mask &= roi
    maps = rng.random(roi.shape) + mask * (0.3 + 1.5 * rng.random(roi.shape))
    maps[rng.random(roi.shape) < 0.15] = 0.0  # exact zeros
    if grid:
        maps = np.round(maps * GRID) / GRID
    areas = mask.sum((1, 2)).astype(np.int64)
    labels = (areas > 0).astype(np.int64)
    scores = (0.5 * rng.random(n) + 0.4 * labels).astype(np.float32)  # in [0, 1]
    return {"image": rng.random(roi.shape).astype(np.float32), "mask": mask, "roi": roi,
            "map": maps.astype(np.float32), "score": scores, "label": labels, "subject": subjects,
            "slice": slices, "area": areas}


def batches(data: dict[str, Any], sizes: Sequence[int], order: Sequence[int] | None = None,
            ) -> Iterator[tuple[dict[str, Any], AnomalyOutput]]:
    """Batches of cycling ``sizes`` over ``order`` (default: dataset order)."""
    order = np.arange(len(data["subject"])) if order is None else np.asarray(order)
    start, k = 0, 0
    while start < len(order):
        idx = order[start:start + sizes[k % len(sizes)]]
        start, k = start + len(idx), k + 1
        batch = {
            "image": torch.from_numpy(data["image"][idx])[:, None],
            "mask": torch.from_numpy(data["mask"][idx].astype(np.float32))[:, None],
            "roi": torch.from_numpy(data["roi"][idx].astype(np.float32))[:, None],
            "label": torch.from_numpy(data["label"][idx]),
            "subject": [data["subject"][i] for i in idx],
            "slice": torch.from_numpy(data["slice"][idx]),
        }
        yield batch, AnomalyOutput(torch.from_numpy(data["map"][idx])[:, None], torch.from_numpy(data["score"][idx]))


def evaluate(data: dict[str, Any], settings: EvaluationSettings | None = None,
             thresholds: dict[str, float] | None = None, sizes: Sequence[int] = (4, 1, 7, 3),
             order: Sequence[int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    evaluator = SetEvaluator(settings or EvaluationSettings(), SetLayout(data["subject"], data["area"]),
                                 thresholds=thresholds)
    for batch, output in batches(data, sizes, order):
        check_output(output, batch, "synthetic")
        evaluator.update(batch, output)
    return evaluator.compute()


# ---- independent references ------------------------------------------------------------------------------------
def counts(flags: np.ndarray, mask: np.ndarray, roi: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) inside roi."""
    f, m = flags[roi], mask[roi]
    return (int(np.sum(f & m)), int(np.sum(f & ~m)), int(np.sum(~f & m)), int(np.sum(~f & ~m)))


def dice(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fn > 0 else math.nan


def best_dice(values: np.ndarray, targets: np.ndarray) -> float:
    """Max over thresholds at every distinct value of the Dice of ``values >= t``."""
    best = -1.0
    for t in np.unique(values):
        flags = values >= t
        best = max(best, dice(int(np.sum(flags & targets)), int(np.sum(flags & ~targets)),
                              int(np.sum(~flags & targets))))
    return best


def stratum_of(areas: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Stratum index per slice: small = [1, e1], then (e_i, e_i+1], last (e_n, inf); -1 without lesion pixels."""
    bounds = [0.0, *edges, math.inf]
    index = np.full(len(areas), -1)
    for k in range(len(bounds) - 1):
        index[(areas > bounds[k]) & (areas <= bounds[k + 1])] = k
    index[areas == 0] = -1
    return index


def names_for(n: int) -> list[str]:
    return ["small", "medium", "large"] if n == 3 else [f"size_{i}" for i in range(n)]


def same(a: Any, b: Any) -> bool:
    """Deep equality with NaN == NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture(scope="module")
def lesion_set() -> dict[str, Any]:
    data = make_set(0)
    positive = data["area"][data["area"] > 0]
    edges = np.percentile(positive, [25, 75])
    # the fixture must exercise what the tests claim: several lesion slices, distinct edges, healthy subjects
    assert len(positive) >= 8 and edges[0] < edges[1]
    assert any(data["area"][np.array(data["subject"]) == s].sum() == 0 for s in NAMES)
    return data


@pytest.fixture(scope="module")
def lesion_result(lesion_set):
    return evaluate(lesion_set, thresholds=THRESHOLDS)


# ---- 1. test set with lesions ------------------------------------------------------------------------------------
def test_pixel_ranking_metrics_match_sklearn(lesion_set, lesion_result):
    result, curves = lesion_result
    roi = lesion_set["roi"]
    values, targets = lesion_set["map"][roi], lesion_set["mask"][roi]
    pixel = result["pixel"]
    assert pixel["n_roi_pixels"] == int(roi.sum())
    assert pixel["n_lesion_pixels"] == int(targets.sum())
    assert pixel["auroc"] == pytest.approx(roc_auc_score(targets, values), abs=1e-9)
    assert pixel["auprc"] == pytest.approx(average_precision_score(targets, values), abs=1e-9)
    assert not any(key.startswith("pixel.") for key in result["notes"])
    # ROC curve: one point per distinct value, as scikit-learn's without dropped intermediates
    fpr, tpr, _ = roc_curve(targets, values, drop_intermediate=False)
    np.testing.assert_allclose(curves["roc"]["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(curves["roc"]["tpr"], tpr, atol=1e-12)


def test_pixel_ranking_with_continuous_maps_is_within_bin_tolerance():
    data = make_set(1, grid=False)
    result, _ = evaluate(data)
    roi = data["roi"]
    values, targets = data["map"][roi], data["mask"][roi]
    assert result["pixel"]["auroc"] == pytest.approx(roc_auc_score(targets, values), abs=1e-4)
    assert result["pixel"]["auprc"] == pytest.approx(average_precision_score(targets, values), abs=1e-3)


def test_best_dice_is_the_maximum_over_every_distinct_value(lesion_set, lesion_result):
    pixel = lesion_result[0]["pixel"]
    roi = lesion_set["roi"]
    values, targets = lesion_set["map"][roi], lesion_set["mask"][roi]
    assert pixel["best_dice"] == pytest.approx(best_dice(values, targets), abs=1e-9)
    tp, fp, fn, _ = counts(lesion_set["map"] >= np.float32(pixel["best_dice_threshold"]), lesion_set["mask"], roi)
    assert dice(tp, fp, fn) == pytest.approx(pixel["best_dice"], abs=1e-12)


def test_calibrated_metrics_match_numpy_counts(lesion_set, lesion_result):
    result = lesion_result[0]
    maps, mask, roi = lesion_set["map"], lesion_set["mask"], lesion_set["roi"]
    subjects = np.array(lesion_set["subject"])
    assert set(result["calibrated"]) == set(THRESHOLDS)
    for name, threshold in THRESHOLDS.items():
        got = result["calibrated"][name]
        flags = maps >= np.float32(threshold)
        tp, fp, fn, tn = counts(flags, mask, roi)
        assert got["threshold"] == threshold
        assert got["dice"] == pytest.approx(dice(tp, fp, fn), abs=1e-12)
        assert got["recall"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert got["fpr"] == pytest.approx(fp / (fp + tn), abs=1e-12)
        if tp + fp:
            assert got["precision"] == pytest.approx(tp / (tp + fp), abs=1e-12)
        else:
            assert math.isnan(got["precision"]) and f"calibrated.{name}.precision" in result["notes"]
        per_subject = []
        for s in NAMES:
            rows = subjects == s
            if mask[rows][roi[rows]].any():
                tp, fp, fn, _ = counts(flags[rows], mask[rows], roi[rows])
                per_subject.append(dice(tp, fp, fn))
        assert got["n_volumes_with_lesion"] == len(per_subject) == 3
        assert got["volume_dice_mean"] == pytest.approx(np.mean(per_subject), abs=1e-12)
        assert got["volume_dice_std"] == pytest.approx(np.std(per_subject, ddof=0), abs=1e-12)
    assert result["calibrated"]["healthy_fpr@5%"]["recall"] == 1.0  # threshold 0 flags zeros too
    assert result["calibrated"]["nothing"]["dice"] == 0.0


def test_sample_metrics_match_sklearn(lesion_set, lesion_result):
    sample = lesion_result[0]["sample"]
    scores, labels = lesion_set["score"], lesion_set["label"]
    assert sample["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert sample["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert sample["n_slices"] == len(labels) and sample["n_anomalous_slices"] == int(labels.sum())
    for key, label in (("normal", 0), ("anomalous", 1)):
        distribution = sample["score_distribution"][key]
        chosen = scores[labels == label].astype(np.float64)
        assert distribution["n"] == len(chosen)
        assert distribution["q50"] == pytest.approx(np.median(chosen), abs=1e-9)
        assert distribution["mean"] == pytest.approx(np.mean(chosen), abs=1e-9)


def test_sample_auroc_with_unbounded_scores():
    """Scores outside [0, 1] must not be squashed (torchmetrics would read them as logits and tie large ones)."""
    data = make_set(0)
    data["score"] = (20 + 10 * data["label"] + data["score"]).astype(np.float32)  # e.g. a sum of the map
    sample = evaluate(data)[0]["sample"]
    assert sample["auroc"] == pytest.approx(roc_auc_score(data["label"], data["score"]), abs=1e-6)
    assert sample["auprc"] == pytest.approx(average_precision_score(data["label"], data["score"]), abs=1e-6)


def check_strata(data: dict[str, Any], result: dict[str, Any], edges: Sequence[float],
                 thresholds: dict[str, float]) -> None:
    """Every lesion-size bin against numpy / sklearn on the roi pixels of exactly its slices."""
    lesion_size = result["lesion_size"]
    assert lesion_size["edges"] == pytest.approx(list(edges), abs=0)
    stratum = stratum_of(data["area"], edges)
    names = names_for(len(edges) + 1)
    assert list(lesion_size["bins"]) == names
    for k, name in enumerate(names):
        entry = lesion_size["bins"][name]
        rows = stratum == k
        assert entry["n_slices"] == int(rows.sum())
        roi, mask, maps = data["roi"][rows], data["mask"][rows], data["map"][rows]
        values, targets = maps[roi], mask[roi]
        assert entry["n_lesion_pixels"] == int(targets.sum())
        if not targets.any():
            assert math.isnan(entry["auprc"]) and math.isnan(entry["best_dice"])
            assert f"lesion_size.{name}.auprc" in result["notes"]
            continue
        assert entry["auprc"] == pytest.approx(average_precision_score(targets, values), abs=1e-9)
        assert entry["best_dice"] == pytest.approx(best_dice(values, targets), abs=1e-9)
        for t_name, threshold in thresholds.items():
            tp, fp, fn, _ = counts(maps >= np.float32(threshold), mask, roi)
            assert entry[f"dice@{t_name}"] == pytest.approx(dice(tp, fp, fn), abs=1e-12)


def test_lesion_size_strata_from_test_set_quartiles(lesion_set, lesion_result):
    edges = np.percentile(lesion_set["area"][lesion_set["area"] > 0], [25, 75])
    check_strata(lesion_set, lesion_result[0], edges.tolist(), THRESHOLDS)
    assert "percentiles" in lesion_result[0]["lesion_size"]["edge_source"]


@pytest.mark.parametrize("pick", [(2, 5), (0,), (1, 3, 6)])
def test_lesion_size_strata_with_configured_edges(lesion_set, pick):
    # edges equal to actual slice areas: a slice whose area equals an edge belongs to the lower bin
    areas = np.unique(lesion_set["area"][lesion_set["area"] > 0])
    edges = tuple(float(areas[i]) for i in pick)
    result, _ = evaluate(lesion_set, EvaluationSettings(lesion_size_edges=edges), THRESHOLDS)
    assert result["lesion_size"]["edge_source"] == "configured"
    check_strata(lesion_set, result, edges, THRESHOLDS)


def test_configured_edges_with_empty_bins_give_nan_and_a_note(lesion_set):
    result, _ = evaluate(lesion_set, EvaluationSettings(lesion_size_edges=(1000.0,)), THRESHOLDS)
    bins = result["lesion_size"]["bins"]
    assert bins["size_1"]["n_slices"] == 0 and math.isnan(bins["size_1"]["auprc"])
    assert "lesion_size.size_1.auprc" in result["notes"]
    check_strata(lesion_set, result, (1000.0,), THRESHOLDS)


def test_size_edges():
    areas = np.array([0, 5, 0, 1, 9, 30, 12, 7])
    edges, source = size_edges(areas, None)
    assert edges == pytest.approx(np.percentile([5, 1, 9, 30, 12, 7], [25, 75]).tolist(), abs=0)
    assert "percentiles" in source
    assert size_edges(areas, (3, 10)) == ([3.0, 10.0], "configured")
    assert size_edges(np.zeros(4, dtype=np.int64), None)[0] == []


@pytest.mark.parametrize("sizes", [(1,), (25,), (6, 2, 9)])
def test_results_do_not_depend_on_the_batch_split(lesion_set, lesion_result, sizes):
    result, curves = evaluate(lesion_set, thresholds=THRESHOLDS, sizes=sizes)
    assert same(result, lesion_result[0])
    assert same(curves, lesion_result[1])


# ---- 2. edge cases ---------------------------------------------------------------------------------------------
def test_healthy_test_set_gives_nan_with_reasons():
    data = make_set(2, lesion_subjects=())
    assert not data["mask"].any()
    thresholds = {"healthy_fpr@1%": 0.5}
    result, _ = evaluate(data, thresholds=thresholds)
    notes = result["notes"]
    for key in ("auroc", "auprc", "best_dice"):
        assert math.isnan(result["pixel"][key])
        assert f"pixel.{key}" in notes
    assert result["pixel"]["n_lesion_pixels"] == 0 and result["pixel"]["n_roi_pixels"] == int(data["roi"].sum())
    calibrated = result["calibrated"]["healthy_fpr@1%"]
    assert math.isnan(calibrated["dice"]) and "calibrated.healthy_fpr@1%.dice" in notes
    assert math.isnan(calibrated["volume_dice_mean"]) and calibrated["n_volumes_with_lesion"] == 0
    _, fp, _, tn = counts(data["map"] >= np.float32(0.5), data["mask"], data["roi"])
    assert calibrated["fpr"] == pytest.approx(fp / (fp + tn), abs=1e-12)
    assert result["lesion_size"]["bins"] == {} and "lesion_size" in notes
    assert math.isnan(result["sample"]["auroc"]) and "sample.auroc" in notes


def test_no_thresholds_skips_calibrated_metrics_with_a_note(lesion_set):
    result, _ = evaluate(lesion_set)
    assert "calibrated" not in result and "calibrated" in result["notes"]
    assert all(not any(k.startswith("dice@") for k in entry) for entry in result["lesion_size"]["bins"].values())


def _one_batch(b: int = 4):
    data = make_set(3, names=("a",), counts=(b,))
    return next(batches(data, (b,)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.anomaly_map.__setitem__((0, 0, 3, 3), float("nan")), "NaN/Inf"),
        (lambda o: o.anomaly_map.__setitem__((1, 0, 0, 0), float("inf")), "NaN/Inf"),
        (lambda o: o.anomaly_map.__setitem__((1, 0, 0, 0), -float("inf")), "NaN/Inf"),
        (lambda o: o.anomaly_score.__setitem__(2, float("nan")), "NaN/Inf"),
        (lambda o: o.anomaly_map.__setitem__((2, 0, 5, 5), -1e-6), "negative"),
        (lambda o: setattr(o, "anomaly_map", o.anomaly_map[:, :, :8]), "shape"),
        (lambda o: setattr(o, "anomaly_map", o.anomaly_map[:, 0]), "shape"),
        (lambda o: setattr(o, "anomaly_map", o.anomaly_map[:3]), "shape"),
        (lambda o: setattr(o, "anomaly_score", o.anomaly_score[:, None]), "shape"),
    ],
)
def test_check_output_rejects_bad_outputs_naming_the_method(change, message):
    batch, output = _one_batch()
    output = AnomalyOutput(output.anomaly_map.clone(), output.anomaly_score.clone())
    change(output)
    with pytest.raises(MethodOutputError, match=f"method my_method: .*{message}"):
        check_output(output, batch, "my_method")


@pytest.mark.parametrize("wrong", [lambda o: (o.anomaly_map, o.anomaly_score), lambda o: o.anomaly_map, lambda o: None])
def test_check_output_rejects_other_types(wrong):
    batch, output = _one_batch()
    with pytest.raises(MethodOutputError, match=r"method my_method: .*AnomalyOutput"):
        check_output(wrong(output), batch, "my_method")


def test_check_output_accepts_zeros_and_negative_zero():
    batch, output = _one_batch()
    output.anomaly_map[0] = 0.0
    output.anomaly_map[1, 0, 0, 0] = -0.0
    check_output(output, batch, "my_method")


# ---- 3. healthy calibration ------------------------------------------------------------------------------------
def healthy_set(seed: int, n_subjects: int, n_slices: int, size: int, grid: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    data = make_set(seed, names=[f"h{i}" for i in range(n_subjects)], counts=[n_slices] * n_subjects,
                    lesion_subjects=(), grid=False, size=size)
    maps = rng.gamma(2.0, 0.5, data["roi"].shape)
    maps[rng.random(maps.shape) < 0.1] = 0.0
    data["map"] = (np.round(maps * GRID) / GRID if grid else maps).astype(np.float32)
    return data


def calibrate(data: dict[str, Any], settings: EvaluationSettings, sizes: Sequence[int],
              order: Sequence[int] | None = None) -> dict[str, Any]:
    names, per_subject = np.unique(data["subject"], return_counts=True)
    calibration = HealthyCalibration(settings, dict(zip(names.tolist(), per_subject.tolist(), strict=True)))
    for batch, output in batches(data, sizes, order):
        calibration.update(batch, output)
    return calibration.compute()


def test_healthy_calibration_reaches_the_target_fpr():
    data = healthy_set(4, n_subjects=4, n_slices=25, size=52, grid=False)
    values = data["map"][data["roi"]]
    assert len(values) >= 200_000
    result = calibrate(data, EvaluationSettings(), sizes=(17, 5, 30))
    assert result["n_pixels"] == len(values)
    assert set(result["thresholds"]) == {"healthy_fpr@1%", "healthy_fpr@2%", "healthy_fpr@5%"}
    for target in (0.01, 0.02, 0.05):
        entry = result["thresholds"][f"healthy_fpr@{100 * target:g}%"]
        fpr = float(np.mean(values >= np.float32(entry["threshold"])))
        assert entry["target_fpr"] == target
        assert fpr <= target and target - fpr <= 0.001
        assert entry["achieved_fpr"] == pytest.approx(fpr, abs=1e-12)


def test_healthy_calibration_without_roi_pixels_raises():
    data = healthy_set(5, n_subjects=1, n_slices=2, size=16, grid=True)
    data["roi"][:] = False
    with pytest.raises(ValueError, match="no roi pixels"):
        calibrate(data, EvaluationSettings(), sizes=(2,))


# ---- 4. post-processing (baur-like profile) --------------------------------------------------------------------
PROFILE = PostProcessing("baur", median_size=3, roi_erosion_iterations=1, min_component_size=4)


def erode_cross(roi: np.ndarray, iterations: int) -> np.ndarray:
    """Per-slice erosion with the 4-neighbour cross, zero outside the image."""
    result = roi.copy()
    for _ in range(iterations):
        p = np.pad(result, ((0, 0), (1, 1), (1, 1)), constant_values=False)
        result = p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return result


def median3d(volume: np.ndarray, size: int) -> np.ndarray:
    padded = np.pad(volume, size // 2, constant_values=0.0)
    return np.median(sliding_window_view(padded, (size, size, size)), axis=(-3, -2, -1)).astype(np.float32)


def drop_small_components(flags: np.ndarray, min_size: int) -> np.ndarray:
    labels, _ = ndimage.label(flags, structure=np.ones((3, 3, 3)))
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    return keep[labels]


def reference_volumes(data: dict[str, Any], profile: PostProcessing) -> dict[str, dict[str, np.ndarray]]:
    """Per subject: slices sorted by slice index, processed map, mask and un-eroded roi."""
    subjects = np.array(data["subject"])
    volumes = {}
    for s in np.unique(subjects):
        rows = np.flatnonzero(subjects == s)
        rows = rows[np.argsort(data["slice"][rows])]
        roi = data["roi"][rows]
        processed = data["map"][rows] * erode_cross(roi, profile.roi_erosion_iterations)
        volumes[str(s)] = {"map": median3d(processed, profile.median_size), "mask": data["mask"][rows], "roi": roi,
                           "area": data["area"][rows]}
    return volumes


def interleaved_order(data: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Slices of the first two subjects interleaved and shuffled within subject, the rest shuffled per subject."""
    subjects = np.array(data["subject"])
    per_subject = [rng.permutation(np.flatnonzero(subjects == s)) for s in dict.fromkeys(data["subject"])]
    a, b = per_subject[0], per_subject[1]
    mixed = [i for pair in zip(a, b, strict=False) for i in pair]
    mixed += list(a[len(b):]) + list(b[len(a):])
    return np.array(mixed + [i for rest in per_subject[2:] for i in rest])


def test_postprocessing_calibrated_metrics_match_reference():
    data = make_set(6, counts=(5, 6, 4, 7, 3))
    data["slice"] = data["slice"] * 2 + 10  # gaps between selected slices are closed when stacking
    order = interleaved_order(data, np.random.default_rng(0))
    thresholds = {"a": 36 / GRID, "b": 44.5 / GRID, "c": 52 / GRID, "d": 70 / GRID}
    settings = EvaluationSettings(postprocessing=PROFILE, lesion_size_edges=(6.0, 20.0))
    result, _ = evaluate(data, settings, thresholds, sizes=(3, 5, 2), order=order)
    volumes = reference_volumes(data, PROFILE)
    removed = 0
    for name, threshold in thresholds.items():
        total = np.zeros(4, dtype=np.int64)
        strata = np.zeros((3, 4), dtype=np.int64)
        per_volume = []
        for volume in volumes.values():
            raw = volume["map"] >= np.float32(threshold)
            flags = drop_small_components(raw, PROFILE.min_component_size)
            removed += int(raw.sum() - flags.sum())
            c = np.array(counts(flags, volume["mask"], volume["roi"]))
            total += c
            if c[0] + c[2] > 0:
                per_volume.append(dice(c[0], c[1], c[2]))
            stratum = stratum_of(volume["area"], (6.0, 20.0))
            for k in range(3):
                rows = stratum == k
                strata[k] += counts(flags[rows], volume["mask"][rows], volume["roi"][rows])
        got = result["calibrated"][name]
        tp, fp, fn, tn = (int(v) for v in total)
        assert got["dice"] == pytest.approx(dice(tp, fp, fn), abs=1e-12)
        assert got["recall"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert got["fpr"] == pytest.approx(fp / (fp + tn), abs=1e-12)
        assert got["precision"] == pytest.approx(tp / (tp + fp), abs=1e-12)
        assert got["n_volumes_with_lesion"] == len(per_volume)
        assert got["volume_dice_mean"] == pytest.approx(np.mean(per_volume), abs=1e-12)
        assert got["volume_dice_std"] == pytest.approx(np.std(per_volume), abs=1e-12)
        for k, stratum_name in enumerate(("small", "medium", "large")):
            assert result["lesion_size"]["bins"][stratum_name][f"dice@{name}"] == pytest.approx(
                dice(*strata[k][:3]), abs=1e-12, nan_ok=True)
    assert removed > 0  # component removal did something
    # ranking metrics use the raw maps, whatever the profile
    raw_result, _ = evaluate(data, EvaluationSettings(lesion_size_edges=(6.0, 20.0)))
    assert same(result["pixel"], raw_result["pixel"])


def test_postprocessing_result_does_not_depend_on_order_or_batch_split():
    data = make_set(7)
    settings = EvaluationSettings(postprocessing=PROFILE)
    first, _ = evaluate(data, settings, THRESHOLDS, sizes=(25,))
    second, _ = evaluate(data, settings, THRESHOLDS, sizes=(2, 3), order=interleaved_order(data,
                                                                                          np.random.default_rng(1)))
    assert same(first, second)


def test_postprocessing_calibration_matches_numpy_thresholds():
    data = healthy_set(8, n_subjects=3, n_slices=8, size=24, grid=True)
    data["slice"] = data["slice"][::-1].copy()  # slices arrive in descending order
    settings = EvaluationSettings(postprocessing=PROFILE, fpr_targets=(0.01, 0.05, 0.2))
    result = calibrate(data, settings, sizes=(5, 3), order=interleaved_order(data, np.random.default_rng(2)))
    values = np.concatenate([v["map"][v["roi"]] for v in reference_volumes(data, PROFILE).values()])
    assert result["n_pixels"] == len(values) and result["postprocessing"] == "baur"
    distinct = np.unique(values)
    for target in settings.fpr_targets:
        entry = result["thresholds"][f"healthy_fpr@{100 * target:g}%"]
        tails = np.array([np.mean(values >= v) for v in distinct])
        expected = distinct[np.flatnonzero(tails <= target)[0]]  # most sensitive value with FPR <= target
        below = distinct[distinct < expected]
        t = np.float32(entry["threshold"])
        assert (len(below) == 0 or below[-1] < t) and t <= expected  # flags exactly the values >= expected
        fpr = float(np.mean(values >= t))
        assert fpr == pytest.approx(np.mean(values >= expected), abs=0) and fpr <= target
        assert entry["achieved_fpr"] == pytest.approx(fpr, abs=1e-12)


def _assembler_batch(subject: str, slices: Sequence[int]) -> tuple[dict[str, Any], torch.Tensor]:
    n = len(slices)
    batch = {"mask": torch.zeros(n, 1, 4, 4), "roi": torch.ones(n, 1, 4, 4), "subject": [subject] * n,
             "slice": torch.tensor(slices, dtype=torch.int64)}
    return batch, torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 4, 4).clone()


def test_volume_assembler_stacks_in_slice_order():
    assembler = VolumeAssembler({"a": 3, "b": 2})
    assert assembler.add(*_assembler_batch("a", [7, 2])) == []
    assert assembler.add(*_assembler_batch("b", [1])) == []
    (volume,) = assembler.add(*_assembler_batch("a", [5]))
    assert volume.subject == "a" and volume.slices.tolist() == [2, 5, 7]
    assert volume.anomaly_map[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"incomplete volumes.*'b'"):
        assembler.finish()


def test_volume_assembler_missing_slice_raises_at_finish():
    assembler = VolumeAssembler({"a": 3})
    assembler.add(*_assembler_batch("a", [0, 1]))
    with pytest.raises(ValueError, match=r"incomplete volumes.*2 of 3"):
        assembler.finish()


def test_volume_assembler_duplicated_slice_after_completion_raises():
    assembler = VolumeAssembler({"a": 2})
    with pytest.raises(ValueError, match=r"'a'.*more slices than expected"):
        assembler.add(*_assembler_batch("a", [0, 1, 1]))


def test_volume_assembler_unknown_subject_raises():
    with pytest.raises(ValueError, match="'z' is not part"):
        VolumeAssembler({"a": 1}).add(*_assembler_batch("z", [0]))


def test_volume_assembler_duplicated_slice_before_completion_raises():
    assembler = VolumeAssembler({"a": 3})
    with pytest.raises(ValueError, match="'a': slice 1 arrived twice"):
        assembler.add(*_assembler_batch("a", [0, 1, 1]))  # slice 2 missing, slice 1 twice
        assembler.finish()


# ---- 5. subject shard sampler ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_subject_shard_sampler_partitions_whole_subjects(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 12, int(rng.integers(1, 12)))
    subjects = np.repeat(np.array([f"s{i:02d}" for i in rng.permutation(len(sizes))]), sizes)
    if seed % 2:  # a dataset order that is not subject-contiguous
        subjects = subjects[rng.permutation(len(subjects))]
    shards = [SubjectShardSampler(subjects, num_replicas=3, rank=r) for r in range(3)]
    indices = [list(iter(s)) for s in shards]
    assert [len(s) for s in shards] == [len(i) for i in indices]
    merged = sorted(i for shard in indices for i in shard)
    assert merged == list(range(len(subjects)))  # every slice exactly once, no padding
    for shard in indices:
        assert shard == sorted(shard)
    owners = {}
    for r, shard in enumerate(indices):
        for i in shard:
            assert owners.setdefault(subjects[i], r) == r  # each subject on exactly one rank
    loads = [len(shard) for shard in indices]
    assert max(loads) - min(loads) <= sizes.max()


def test_vs_healthy_ranks_anomalous_slices_against_the_healthy_set():
    rng = np.random.default_rng(0)
    healthy_scores = rng.normal(0.0, 1.0, 40)
    set_normal, set_anomalous = rng.normal(0.0, 1.0, 25), rng.normal(1.0, 1.0, 15)
    results = {"healthy": {"sample": {}, "notes": {}}, "lesion": {"sample": {}, "notes": {}}}
    curves = {"healthy": {"sample_scores": {"normal": sorted(healthy_scores.tolist()), "anomalous": []}},
              "lesion": {"sample_scores": {"normal": sorted(set_normal.tolist()),
                                           "anomalous": sorted(set_anomalous.tolist())}}}
    add_vs_healthy(results, curves)
    labels = np.r_[np.zeros(40), np.ones(15)]
    scores = np.r_[healthy_scores, set_anomalous].astype(np.float32)
    entry = results["lesion"]["sample"]["vs_healthy"]
    assert entry["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert entry["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert (entry["n_healthy_slices"], entry["n_anomalous_slices"]) == (40, 15)
    assert "vs_healthy" not in results["healthy"]["sample"]  # the reference itself
    no_reference = {"lesion": {"sample": {}, "notes": {}}}
    add_vs_healthy(no_reference, {"lesion": curves["lesion"]})
    assert "vs_healthy" not in no_reference["lesion"]["sample"]
