"""Subject bootstrap (``benchmark.metrics.bootstrap``) and per-subject counts against independent references.

The references below are plain loops over replicates with scikit-learn's ``roc_auc_score`` /
``average_precision_score`` on the pixel values of the drawn subjects; they share only the documented draws
(:func:`subject_weights`, :func:`seed_weights`) with the code under test. Pixel values are chosen as lower edges of
distinct bins of the per-subject layout, written down here from its definition (``2**e * (1 + m / 32)``), so the
coarse histograms lose nothing and binned results must equal scikit-learn's.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from benchmark.metrics import EvaluationSettings, SetLayout
from benchmark.metrics.binning import ScoreBins
from benchmark.metrics.bootstrap import (
    Resampling,
    draw_multiplicities,
    entry_replicates,
    paired_p_value,
    percentile_interval,
    replicate_metrics,
    run_intervals,
    seed_weights,
    subject_weights,
)
from benchmark.metrics.curves import BinnedCurves
from benchmark.metrics.evaluator import SUBJECT_BINS, subject_layout
from benchmark.metrics.evaluator import TestSetEvaluator as SetEvaluator  # not collected as a test class
from benchmark.metrics.histogram import PixelHistogram
from benchmark.metrics.subject_counts import SubjectCounts, read_subject_counts, write_subject_counts
from lightning_modules.base import AnomalyOutput

SUB_BINS, EXPONENT = 32, 24  # the per-subject layout, as documented
THRESHOLDS = {"t_low": 1.0, "t_high": 4.0}


def edge_values() -> np.ndarray:
    """Every fine-bin lower edge of the per-subject layout, ascending (``2**e * (1 + m / 32)``, exact floats)."""
    return np.array([2.0**e * (1 + m / SUB_BINS) for e in range(-EXPONENT, EXPONENT) for m in range(SUB_BINS)])


def test_the_layout_constant_is_the_documented_one() -> None:
    assert ScoreBins(sub_bins_per_octave=SUB_BINS, min_exponent=EXPONENT, max_exponent=EXPONENT) == SUBJECT_BINS
    assert np.array_equal(SUBJECT_BINS.lower_edges()[2:-1].astype(np.float64), edge_values())
    assert SUBJECT_BINS.n_bins * 2 * 8 < 25_000  # bytes of int64 counts per subject


# ---- constructed runs: pixel values with one value per bin -----------------------------------------------------
def make_run(rng: np.random.Generator, n_subjects: int, shift: float, lesion_subjects: int | None = None,
             ) -> tuple[list[tuple[np.ndarray, np.ndarray]], SubjectCounts]:
    """Per-subject (values, labels) and their counts: values are bin edges, lesion pixels ranked higher."""
    edges = edge_values()
    bins_of_value = {value: i for i, value in enumerate(edges)}
    n_lesion_subjects = n_subjects if lesion_subjects is None else lesion_subjects
    pixels, histogram, calibrated = [], [], []
    for s in range(n_subjects):
        n = int(rng.integers(150, 300))
        labels = (rng.random(n) < 0.15) & (s < n_lesion_subjects)
        index = np.clip(np.round(rng.normal(700, 120, n) + shift * labels), 0, len(edges) - 1).astype(int)
        values = edges[index]
        pixels.append((values, labels))
        counts = np.zeros((2, len(edges)), dtype=np.int64)
        np.add.at(counts, (labels.astype(int), np.array([bins_of_value[v] for v in values])), 1)
        histogram.append(counts)
        calibrated.append([[np.sum((values >= t) & labels), np.sum((values >= t) & ~labels),
                            np.sum((values < t) & labels), np.sum((values < t) & ~labels)]
                           for t in THRESHOLDS.values()])
    counts = SubjectCounts.from_histogram([f"s{i}" for i in range(n_subjects)], np.stack(histogram),
                                          list(THRESHOLDS), np.array(calibrated), {})
    return pixels, counts


def reference_metrics(pixels: list[tuple[np.ndarray, np.ndarray]], multiplicity: np.ndarray) -> dict[str, float]:
    """scikit-learn on the pixels of the drawn subjects (a subject drawn twice contributes twice)."""
    drawn = [pixels[s] for s in range(len(pixels)) for _ in range(int(multiplicity[s]))]
    values = np.concatenate([v for v, _ in drawn])
    labels = np.concatenate([lab for _, lab in drawn])
    out = {"pixel/auroc": math.nan, "pixel/auprc": math.nan}
    if labels.any():
        out["pixel/auprc"] = average_precision_score(labels, values)
        if not labels.all():
            out["pixel/auroc"] = roc_auc_score(labels, values)
    for name, t in THRESHOLDS.items():
        tp, fp, fn = np.sum((values >= t) & labels), np.sum((values >= t) & ~labels), np.sum((values < t) & labels)
        out[f"calibrated/{name}/dice"] = 2 * tp / (2 * tp + fp + fn) if tp + fn > 0 else math.nan
    return out


def reference_bootstrap(runs: list[list[tuple[np.ndarray, np.ndarray]]], subjects: np.ndarray,
                        seeds: np.ndarray) -> dict[str, np.ndarray]:
    """Loop over replicates: the mean over drawn seeds of each seed's metrics on the drawn subjects."""
    names = list(reference_metrics(runs[0], np.ones(len(runs[0]))))
    out = {name: np.empty(len(subjects)) for name in names}
    for b in range(len(subjects)):
        per_seed = [reference_metrics(run, subjects[b]) for run in runs]
        for name in names:
            drawn = [value[name] for k, value in enumerate(per_seed) for _ in range(int(seeds[b, k]))]
            out[name][b] = np.mean(drawn)
    return out


def test_two_level_intervals_equal_a_plain_scikit_learn_bootstrap() -> None:
    rng = np.random.default_rng(3)
    runs = [make_run(rng, 5, shift=120 + 40 * k) for k in range(3)]
    resampling = Resampling(resamples=150, seed=7)
    got = entry_replicates([counts for _, counts in runs], "ae", resampling)
    expected = reference_bootstrap([pixels for pixels, _ in runs], subject_weights(5, resampling),
                                   seed_weights(3, "ae", resampling))
    assert set(got) == set(expected)
    for name, values in expected.items():
        assert np.all(np.isfinite(values)), name
        np.testing.assert_allclose(got[name], values, rtol=0, atol=1e-9, err_msg=name)
        low, high = percentile_interval(got[name])
        assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-9)
        assert low < high
    # seeds really are drawn: the replicates are not those of the seed mean of a plain subject bootstrap
    per_seed = [replicate_metrics(counts, subject_weights(5, resampling)) for _, counts in runs]
    assert not np.allclose(got["pixel/auroc"], np.mean([m["pixel/auroc"] for m in per_seed], axis=0))


def test_one_seed_is_a_plain_subject_bootstrap() -> None:
    rng = np.random.default_rng(4)
    pixels, counts = make_run(rng, 6, shift=150, lesion_subjects=4)  # two subjects without lesion pixels
    resampling = Resampling(resamples=200, seed=0)
    weights = subject_weights(6, resampling)
    expected = reference_bootstrap([pixels], weights, np.ones((200, 1)))
    got = entry_replicates([counts], "ae", resampling)
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=0, atol=1e-9, err_msg=name)
    assert np.all(seed_weights(1, "ae", resampling) == 1)
    # replicates that drew only lesion-free subjects have undefined metrics and are left out of the interval
    undefined = np.isnan(expected["pixel/auprc"])
    assert undefined.any() and not undefined.all()
    intervals = run_intervals(counts, resampling)
    finite = expected["pixel/auprc"][~undefined]
    assert intervals["pixel/auprc"] == pytest.approx(tuple(np.percentile(finite, [2.5, 97.5])), abs=1e-9)


def test_draws_are_the_documented_ones_and_reproducible() -> None:
    raw = np.random.PCG64(np.random.SeedSequence([0, 0])).random_raw(4 * 7)
    index = ((raw >> np.uint64(32)) * np.uint64(7)) >> np.uint64(32)
    expected = np.stack([np.bincount(row, minlength=7) for row in index.reshape(4, 7).astype(int)])
    assert np.array_equal(subject_weights(7, Resampling(resamples=4, seed=0)), expected)
    assert np.array_equal(draw_multiplicities(7, 4, 0, 0), expected)
    # a fixed snapshot: the same draws on any machine and numpy version (PCG64 and SeedSequence are fixed)
    assert subject_weights(5, Resampling(resamples=3, seed=0)).astype(int).tolist() == SNAPSHOT
    weights = subject_weights(4, Resampling(resamples=20000))
    assert np.all(weights.sum(axis=1) == 4)
    assert weights.mean(axis=0) == pytest.approx(np.ones(4), abs=0.03)  # each subject drawn once on average
    assert not np.array_equal(seed_weights(3, "ae"), seed_weights(3, "random"))  # independent per entry
    assert np.array_equal(seed_weights(3, "ae"), seed_weights(3, "ae"))


SNAPSHOT = [[2, 1, 0, 1, 1], [0, 0, 1, 2, 2], [2, 0, 0, 1, 2]]


def test_paired_p_value_against_a_hand_enumeration() -> None:
    # three subjects, one threshold: (tp, fp, fn, tn) of the entry and of the reference
    entry = {"a": (8, 2, 2, 88), "b": (1, 5, 9, 85), "c": (5, 5, 5, 85)}
    reference = {"a": (4, 6, 6, 84), "b": (3, 3, 7, 87), "c": (5, 5, 5, 85)}  # c: identical (a tie)

    def counts(table: dict[str, tuple[int, ...]]) -> SubjectCounts:
        return SubjectCounts(("a", "b", "c"), np.zeros(0, np.int64), np.zeros((3, 2, 0), np.int64), ("t",),
                             np.array([[table[s]] for s in "abc"]))

    resampling = Resampling(resamples=12, seed=1)
    weights = subject_weights(3, resampling)
    differences = []
    for row in weights.astype(int).tolist():
        dice = []
        for table in (entry, reference):
            tp = sum(m * table[s][0] for m, s in zip(row, "abc", strict=True))
            fp = sum(m * table[s][1] for m, s in zip(row, "abc", strict=True))
            fn = sum(m * table[s][2] for m, s in zip(row, "abc", strict=True))
            dice.append(2 * tp / (2 * tp + fp + fn))
        differences.append(dice[0] - dice[1])
    assert any(d > 0 for d in differences) and any(d <= 0 for d in differences)
    expected = (1 + sum(d <= 0 for d in differences)) / (12 + 1)
    got_entry = entry_replicates([counts(entry)], "new", resampling)["calibrated/t/dice"]
    got_reference = entry_replicates([counts(reference)], "random", resampling)["calibrated/t/dice"]
    assert paired_p_value(got_entry, got_reference) == pytest.approx(expected, abs=1e-12)
    # only-c draws tie exactly: d = 0 counts against the entry
    assert paired_p_value(np.array([0.1, -0.2, 0.0, np.nan, 0.3]), np.zeros(5)) == pytest.approx(3 / 5)
    assert math.isnan(paired_p_value(np.array([np.nan]), np.array([0.5])))


def test_undefined_metrics_give_nan_intervals() -> None:
    rng = np.random.default_rng(5)
    _, counts = make_run(rng, 3, shift=100, lesion_subjects=0)  # a healthy test set
    intervals = run_intervals(counts, Resampling(resamples=50))
    assert all(math.isnan(v) for pair in intervals.values() for v in pair)


# ---- the evaluator's per-subject counts --------------------------------------------------------------------------
def realistic_set(seed: int, sigma: float, shift: float, n_subjects: int = 8, depth: int = 12, size: int = 48,
                  ) -> dict[str, np.ndarray]:
    """Smooth log-normal maps with round lesions (60 % of slices) scaled by ``exp(shift)``, in a disc roi."""
    rng = np.random.default_rng(seed)
    n = n_subjects * depth
    yy, xx = np.mgrid[:size, :size]
    roi = np.broadcast_to(((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2, (n, size, size))
    mask = np.zeros((n, size, size), bool)
    for i in range(n):
        if rng.random() < 0.6:
            cy, cx = rng.integers(12, size - 12, 2)
            mask[i] = ((yy - cy) ** 2 + (xx - cx) ** 2) < int(rng.integers(2, 7)) ** 2
    mask &= roi
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 1.5, 1.5)) * 3
    maps = (np.exp(sigma * field + shift * mask) * roi).astype(np.float32)
    subjects = [f"p{s:02d}" for s in range(n_subjects - 1, -1, -1) for _ in range(depth)]  # unsorted names
    return {"map": maps, "mask": mask, "roi": np.ascontiguousarray(roi), "subject": subjects,
            "area": mask.sum((1, 2))}


def evaluate(data: dict[str, np.ndarray], order: np.ndarray, batch: int = 10) -> SetEvaluator:
    evaluator = SetEvaluator(EvaluationSettings(), SetLayout(data["subject"], data["area"]),
                             {"t": float(np.quantile(data["map"][data["roi"]], 0.95))})
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        evaluator.update({"roi": torch.from_numpy(data["roi"][idx, None].astype(np.float32)),
                          "mask": torch.from_numpy(data["mask"][idx, None].astype(np.float32)),
                          "label": torch.from_numpy((data["area"][idx] > 0).astype(np.int64)),
                          "subject": [data["subject"][i] for i in idx], "slice": torch.from_numpy(idx)},
                         AnomalyOutput(torch.from_numpy(data["map"][idx, None]),
                                       torch.from_numpy(data["map"][idx].mean((1, 2)))))
    return evaluator


def test_evaluator_counts_every_subjects_roi_pixels_in_its_bins() -> None:
    data = realistic_set(0, sigma=1.0, shift=1.0)
    order = np.random.default_rng(0).permutation(len(data["subject"]))  # subjects interleaved across batches
    evaluator = evaluate(data, order)
    result, _ = evaluator.compute()
    counts = evaluator.subject_counts
    assert counts.subjects == tuple(sorted(set(data["subject"]))) and counts.layout == subject_layout()
    edges = np.concatenate([[0.0, 0.0], edge_values()])  # zero bin, underflow bin (0, 2**-24), fine bins
    for s, subject in enumerate(counts.subjects):
        rows = np.array([name == subject for name in data["subject"]])
        values = data["map"][rows][data["roi"][rows]].astype(np.float64)
        labels = data["mask"][rows][data["roi"][rows]]
        index = np.where(values == 0, 0, np.searchsorted(edges, values, side="right") - 1)
        index = np.where((values > 0) & (values < 2.0**-EXPONENT), 1, index)
        expected = np.zeros((2, SUBJECT_BINS.n_bins), np.int64)
        np.add.at(expected, (labels.astype(int), index), 1)
        full = np.zeros((2, SUBJECT_BINS.n_bins), np.int64)
        full[:, counts.bins] = counts.pixels[s]
        assert np.array_equal(full, expected), subject
        flags = values >= evaluator.thresholds["t"]
        assert counts.calibrated[s, 0].tolist() == [np.sum(flags & labels), np.sum(flags & ~labels),
                                                   np.sum(~flags & labels), np.sum(~flags & ~labels)]
    assert np.all(counts.pixels.sum(axis=(0, 1)) > 0)  # only occupied bins are kept
    assert result["pixel"]["n_roi_pixels"] == int(counts.pixels.sum())
    tp, fp, fn, _ = counts.calibrated.sum(0)[0]
    assert result["calibrated"]["t"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-15)
    assert counts.fine == {"pixel/auroc": result["pixel"]["auroc"], "pixel/auprc": result["pixel"]["auprc"]}
    # metrics.json's single-run intervals are the plain subject bootstrap of these counts
    intervals = run_intervals(counts)
    assert result["pixel"]["ci95"] == {"auroc": list(intervals["pixel/auroc"]),
                                       "auprc": list(intervals["pixel/auprc"])}
    assert result["calibrated"]["t"]["dice_ci95"] == list(intervals["calibrated/t/dice"])
    for key in ("auroc", "auprc"):
        low, high = result["pixel"]["ci95"][key]
        assert low <= result["pixel"][key] <= high and high - low > 0.01
    # the batch order does not matter
    again = evaluate(data, np.arange(len(data["subject"])), batch=7)
    again.compute()
    assert np.array_equal(again.subject_counts.pixels, counts.pixels)


COARSE_AUROC_TOLERANCE = 1e-3  # coarse per-subject bins summed over subjects vs the fine pooled histogram
COARSE_AUPRC_TOLERANCE = 0.02  # ties in 3 % bins lower AP most for narrow score distributions
CENTRED_TOLERANCE = 5e-3  # bootstrap replicates (centred on the fine values) vs replicates of fine histograms


@pytest.mark.parametrize(("sigma", "shift"), [(0.3, 0.3), (1.0, 0.3), (1.0, 1.0), (1.0, 2.0)])
def test_coarse_subject_histograms_reproduce_the_fine_pooled_metrics(sigma: float, shift: float) -> None:
    data = realistic_set(1, sigma, shift)
    evaluator = evaluate(data, np.arange(len(data["subject"])))
    result, _ = evaluator.compute()
    counts = evaluator.subject_counts
    summed = counts.pixels.sum(0)
    coarse = BinnedCurves(summed[1], summed[0], np.arange(summed.shape[1]))
    assert coarse.auroc() == pytest.approx(result["pixel"]["auroc"], abs=COARSE_AUROC_TOLERANCE)
    assert coarse.average_precision() == pytest.approx(result["pixel"]["auprc"], abs=COARSE_AUPRC_TOLERANCE)
    # replicates: the engine's (coarse, centred) against the same replicates of fine per-subject histograms
    fine = PixelHistogram(len(counts.subjects), ScoreBins())
    index = {s: i for i, s in enumerate(counts.subjects)}
    groups = np.array([index[s] for s in data["subject"]])[:, None, None] * np.ones_like(data["roi"], dtype=int)
    fine.update(torch.from_numpy(data["map"]), torch.from_numpy(data["mask"]),
                torch.from_numpy(np.where(data["roi"], groups, -1)))
    fine_counts = SubjectCounts.from_histogram(counts.subjects, fine.counts.numpy(), (), None, {})
    weights = subject_weights(len(counts.subjects), Resampling(resamples=300))
    got, reference = replicate_metrics(counts, weights), replicate_metrics(fine_counts, weights)
    ones = replicate_metrics(counts, np.ones((1, len(counts.subjects))))
    for name in ("pixel/auroc", "pixel/auprc"):
        assert ones[name][0] == pytest.approx(counts.fine[name], abs=1e-12)  # centred on the reported value
        np.testing.assert_allclose(got[name], reference[name], rtol=0, atol=CENTRED_TOLERANCE, err_msg=name)


# ---- subject_counts.npz ----------------------------------------------------------------------------------------
def test_subject_counts_file_round_trip_and_stale_or_missing_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    _, plain = make_run(rng, 3, shift=100)
    _, variant = make_run(rng, 4, shift=50)
    variant = SubjectCounts(variant.subjects, variant.bins, variant.pixels, variant.thresholds, variant.calibrated,
                            subject_layout(), {"pixel/auroc": 0.75, "pixel/auprc": math.nan})
    written = {(None, "tumor"): plain, ("rec", "healthy"): variant}
    path = tmp_path / "run" / "subject_counts.npz"
    write_subject_counts(path, written, key="abc")
    read = read_subject_counts(path.parent, key="abc")
    assert read is not None and list(read) == list(written)
    for entry, original in written.items():
        got = read[entry]
        assert got.subjects == original.subjects and got.thresholds == original.thresholds
        assert np.array_equal(got.bins, original.bins) and np.array_equal(got.pixels, original.pixels)
        assert np.array_equal(got.calibrated, original.calibrated) and got.layout == original.layout
    assert read["rec", "healthy"].fine["pixel/auroc"] == 0.75 and math.isnan(read["rec", "healthy"].fine["pixel/auprc"])
    assert read_subject_counts(path, key="other") is None  # a file of another job
    assert read_subject_counts(tmp_path / "missing") is None
    assert [p.name for p in path.parent.iterdir()] == ["subject_counts.npz"]  # no temporary file left
    path.write_bytes(path.read_bytes()[:100])  # torn
    assert read_subject_counts(path) is None


def test_leaderboard_compare_and_report_do_not_import_torch() -> None:
    """The bootstrap and the counts reader are numpy only: reading results needs no torch or Lightning."""
    code = ("import sys; import benchmark.leaderboard, benchmark.compare, benchmark.report; "
            "loaded = [m for m in ('torch', 'torchmetrics', 'pytorch_lightning') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=120)
