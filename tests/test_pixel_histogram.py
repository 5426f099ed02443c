"""The constant-memory pixel-histogram engine against independent references on the same data.

References: scikit-learn (``roc_auc_score`` / ``average_precision_score``) on the raw float32 scores, and a numpy
re-implementation of the bin layout (``np.frexp``, no bit tricks) used to quantise scores to their bin's lower
edge; on quantised scores the engine must equal scikit-learn up to float rounding, on raw scores up to the
documented 0.1 % bin width (AUROC within 1e-4, AP within 1e-3). Thresholds, Dice and counts are checked by
thresholding the data directly with numpy.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from benchmark.metrics.binning import ScoreBins
from benchmark.metrics.curves import BinnedCurves
from benchmark.metrics.histogram import PixelHistogram

BINS = ScoreBins()
SUB, MIN_EXP, MAX_EXP = BINS.sub_bins_per_octave, BINS.min_exponent, BINS.max_exponent
N_BINS = BINS.n_bins
TINY = np.float32(np.finfo(np.float32).smallest_subnormal)

FAMILIES = ["normal", "lognormal_wide", "ties", "constant", "zeros_plus_positives", "log_uniform"]
POSITIVE_FRACTIONS = [0.001, 0.01, 0.1, 0.5]


# ---- independent references ----------------------------------------------------------------------------------------
def ref_index(x: np.ndarray) -> np.ndarray:
    """Bin index by arithmetic: x = m * 2**e with m in [0.5, 1); the fine bin splits [2**(e-1), 2**e) in SUB."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    mantissa, exponent = np.frexp(x)
    sub = np.floor((2.0 * mantissa - 1.0) * SUB).astype(np.int64)
    index = 2 + (exponent.astype(np.int64) - 1 + MIN_EXP) * SUB + sub
    index = np.where(x >= 2.0**MAX_EXP, N_BINS - 1, index)
    index = np.where(x < 2.0**-MIN_EXP, 1, index)
    return np.where(x == 0.0, 0, index)


def ref_edges() -> np.ndarray:
    k = np.arange(N_BINS - 2, dtype=np.int64)  # fine bins and the overflow bin (k == n_fine)
    fine = np.ldexp(1.0 + (k % SUB) / SUB, (k // SUB - MIN_EXP).astype(np.int32))
    return np.concatenate([[0.0, float(TINY)], fine])


REF_EDGES = ref_edges()


def quantise(x: np.ndarray) -> np.ndarray:
    """Every score replaced by its bin's lower edge: ranking ties are then exactly the engine's bins."""
    return REF_EDGES[ref_index(x)].astype(np.float32)


def dice_np(flagged: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.sum(flagged & truth) / (np.sum(flagged) + np.sum(truth))


# ---- helpers -------------------------------------------------------------------------------------------------------
def chunk_bounds(n: int, cuts: list[float]) -> list[tuple[int, int]]:
    """Uneven (possibly empty) consecutive chunks of range(n) at the given fractions."""
    points = [0, *sorted(int(c * n) for c in cuts), n]
    return list(itertools.pairwise(points))


def histogram(scores: np.ndarray, targets: np.ndarray, cuts: list[float] = (), n_groups: int = 1,
              groups: np.ndarray | None = None) -> PixelHistogram:
    metric = PixelHistogram(n_groups=n_groups)
    for start, stop in chunk_bounds(len(scores), list(cuts)):
        metric.update(torch.from_numpy(scores[start:stop]), torch.from_numpy(targets[start:stop]),
                      None if groups is None else torch.from_numpy(groups[start:stop]))
    return metric


def curves(scores: np.ndarray, targets: np.ndarray, cuts: list[float] = ()) -> BinnedCurves:
    return histogram(scores, targets, cuts).compute()[0]


def make_data(family: str, rng: np.random.Generator, n: int, positive_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 scores >= 0 and bool targets; positives score higher on average (except for constant maps)."""
    n_positive = min(n - 1, max(1, round(n * positive_fraction)))
    y = np.zeros(n, dtype=bool)
    y[rng.choice(n, n_positive, replace=False)] = True
    if family == "normal":
        s = np.abs(rng.normal(1.0, 1.0, n) + 1.0 * y)
    elif family == "lognormal_wide":
        s = np.exp(rng.normal(0.0, 3.0, n) + 1.5 * y)
    elif family == "ties":  # rounded to 0.1 over [1, 9): one distinct value per bin, heavy ties
        s = np.round(rng.uniform(1.0, 6.0, n) + 2.0 * y * rng.random(n), 1)
    elif family == "constant":
        s = np.full(n, rng.choice([0.0, 1e-3, 0.5, 7.0, 3e4]))
    elif family == "zeros_plus_positives":
        zero = rng.random(n) < np.where(y, 0.3, 0.95)
        s = np.where(zero, 0.0, rng.lognormal(0.0, 1.0, n) * (1.0 + y))
    elif family == "log_uniform":  # 1e-8 .. 1e6
        s = 10.0 ** rng.uniform(-8.0, np.where(y, 6.0, 4.0), n)
    else:
        raise AssertionError(family)
    return s.astype(np.float32), y


# ---- the bin layout itself -----------------------------------------------------------------------------------------
def test_lower_edges_match_the_arithmetic_layout_and_the_edge_rule_is_exact():
    edges = BINS.lower_edges()
    assert edges.dtype == np.float32 and len(edges) == N_BINS
    np.testing.assert_array_equal(edges.astype(np.float64), REF_EDGES)
    assert np.all(np.diff(edges) > 0)
    # every edge lies in its own bin, and the float32 just below it in the bin below: "x >= edge" is exact
    below = np.nextafter(edges[1:], np.float32(0))
    np.testing.assert_array_equal(BINS.index(torch.from_numpy(edges)).numpy(), np.arange(N_BINS))
    np.testing.assert_array_equal(BINS.index(torch.from_numpy(below)).numpy(), np.arange(N_BINS - 1))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.0, allow_infinity=False, allow_nan=False, width=32), min_size=1, max_size=50))
def test_index_matches_arithmetic_reference(values):
    x = np.array(values, dtype=np.float32)
    np.testing.assert_array_equal(BINS.index(torch.from_numpy(x)).numpy(), ref_index(x))


def test_special_bins():
    zeros = np.array([0.0, -0.0], dtype=np.float32)
    under = np.array([TINY, 1e-40, 1e-20, 2.0**-41, np.nextafter(np.float32(2.0**-40), np.float32(0))], np.float32)
    over = np.array([2.0**40, 1e20, np.finfo(np.float32).max], dtype=np.float32)
    inside = np.array([2.0**-40, np.nextafter(np.float32(2.0**40), np.float32(0))], dtype=np.float32)
    assert BINS.index(torch.from_numpy(zeros)).tolist() == [0, 0]
    assert BINS.index(torch.from_numpy(under)).tolist() == [1] * len(under)
    assert BINS.index(torch.from_numpy(over)).tolist() == [N_BINS - 1] * len(over)
    assert BINS.index(torch.from_numpy(inside)).tolist() == [2, N_BINS - 2]
    # and through the metric: counts land in those bins, by class
    scores = np.concatenate([zeros, under, over, inside])
    targets = np.arange(len(scores)) % 2 == 1
    result = curves(scores, targets)
    expected = np.zeros((2, N_BINS), dtype=np.int64)
    np.add.at(expected, (targets.astype(int), ref_index(scores)), 1)
    np.testing.assert_array_equal(result.negative, expected[0])
    np.testing.assert_array_equal(result.positive, expected[1])
    assert result.negative[0] + result.positive[0] == 2


# ---- AUROC / AP against scikit-learn ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(30_000, 60_000),
    positive_fraction=st.sampled_from(POSITIVE_FRACTIONS),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=6),
)
def test_auroc_and_ap_match_sklearn(family, n, positive_fraction, seed, cuts):
    scores, targets = make_data(family, np.random.default_rng(seed), n, positive_fraction)
    one_batch = histogram(scores, targets)
    batched = histogram(scores, targets, cuts)
    assert torch.equal(one_batch.counts, batched.counts)  # the chunking does not matter at all
    result = batched.compute()[0]
    assert (result.n_positive, result.n_negative) == (targets.sum(), n - targets.sum())
    auroc, ap = result.auroc(), result.average_precision()
    # exact: with ties defined by the bins, the engine is scikit-learn
    quantised = quantise(scores)
    assert auroc == pytest.approx(roc_auc_score(targets, quantised), abs=1e-9)
    assert ap == pytest.approx(average_precision_score(targets, quantised), abs=1e-9)
    # approximate: on the raw float32 scores, up to the 0.1 % bin width
    assert auroc == pytest.approx(roc_auc_score(targets, scores), abs=1e-4)
    assert ap == pytest.approx(average_precision_score(targets, scores), abs=1e-3)


@pytest.mark.parametrize("seed", range(6))
def test_small_inputs_with_one_value_per_bin_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    scores = np.round(rng.uniform(0.0, 3.0, n), 1).astype(np.float32)  # includes exact zeros and ties
    targets = rng.random(n) < 0.4
    targets[:2] = [True, False]
    result = curves(scores, targets, [0.3, 0.3, 0.8])
    assert result.auroc() == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)
    assert result.average_precision() == pytest.approx(average_precision_score(targets, scores), abs=1e-12)


# ---- edge cases ------------------------------------------------------------------------------------------------------
def test_no_positives_gives_nan_and_no_dice():
    scores = np.random.default_rng(0).random(500).astype(np.float32)
    result = curves(scores, np.zeros(500, dtype=bool))
    assert math.isnan(result.auroc()) and math.isnan(result.average_precision())
    assert result.best_dice() is None
    assert result.n_negative == 500


def test_all_positives():
    scores = np.random.default_rng(1).random(300).astype(np.float32)
    targets = np.ones(300, dtype=bool)
    result = curves(scores, targets, [0.5])
    assert math.isnan(result.auroc())
    assert result.average_precision() == pytest.approx(average_precision_score(targets, scores)) == 1.0
    best = result.best_dice()
    assert best is not None and best.dice == 1.0 and (best.tp, best.fp, best.fn) == (300, 0, 0)
    with pytest.raises(ValueError):
        result.bin_at_fpr(0.01)


def test_empty_input():
    metric = PixelHistogram()
    metric.update(torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    metric.update(torch.zeros(0, 4), torch.zeros(0, 4))
    result = metric.compute()[0]
    assert result.n_positive == 0 and result.n_negative == 0
    assert math.isnan(result.auroc()) and math.isnan(result.average_precision())
    assert result.best_dice() is None
    with pytest.raises(ValueError):
        result.bin_at_fpr(0.05)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0, -1e-30])
def test_invalid_scores_raise_and_leave_the_state_alone(bad):
    metric = PixelHistogram()
    metric.update(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))
    before = metric.counts.clone()
    scores = torch.tensor([[0.1, 2.0], [bad, 3.0]])
    with pytest.raises(ValueError):
        metric.update(scores, torch.zeros(2, 2))
    with pytest.raises(ValueError):
        metric.update(torch.tensor([bad]), torch.tensor([1]))
    assert torch.equal(metric.counts, before)


def test_targets_of_any_dtype_and_shape():
    rng = np.random.default_rng(3)
    scores = rng.random((4, 8, 8)).astype(np.float32)
    truth = rng.random((4, 8, 8)) < 0.2
    counts = []
    for targets in (torch.from_numpy(truth), torch.from_numpy(truth.astype(np.uint8)),
                    torch.from_numpy(truth.astype(np.float32)), torch.from_numpy(truth.astype(np.int64))):
        metric = PixelHistogram()
        metric.update(torch.from_numpy(scores), targets)
        counts.append(metric.counts)
    assert all(torch.equal(c, counts[0]) for c in counts)
    assert int(counts[0][0, 1].sum()) == truth.sum()


# ---- thresholds at a target false-positive rate ----------------------------------------------------------------------
FPRS = [0.01, 0.02, 0.05]


def make_healthy(family: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if family == "normal":
        return np.abs(rng.normal(1.0, 1.0, n)).astype(np.float32)
    if family == "lognormal":
        return rng.lognormal(0.0, 1.5, n).astype(np.float32)
    if family == "gamma":
        return rng.gamma(2.0, 0.01, n).astype(np.float32)
    return (10.0 ** rng.uniform(-8.0, 6.0, n)).astype(np.float32)


@settings(max_examples=12, deadline=None)
@given(family=st.sampled_from(["normal", "lognormal", "gamma", "log_uniform"]), n=st.integers(50_000, 100_000),
       seed=st.integers(0, 2**32 - 1))
def test_threshold_at_fpr_on_continuous_healthy_data(family, n, seed):
    negatives = make_healthy(family, np.random.default_rng(seed), n)
    result = curves(negatives, np.zeros(n, dtype=bool), [0.25, 0.6])
    for p in FPRS:
        point = result.at_bin(result.bin_at_fpr(p))
        measured = float(np.mean(negatives >= np.float32(point.threshold)))
        assert measured <= p
        assert measured >= p - 1e-3
        assert point.fp == int(np.sum(negatives >= np.float32(point.threshold))) and point.fpr == measured
        # most sensitive: the bin of the next lower value would flag more than p
        lower = negatives[negatives < point.threshold]
        if len(lower):
            next_edge = REF_EDGES[ref_index(lower.max())]
            assert np.mean(negatives >= np.float32(next_edge)) > p


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20_000), step=st.sampled_from([0.1, 0.5, 1.0]), scale=st.sampled_from([0.3, 1.0, 4.0]),
       seed=st.integers(0, 2**32 - 1), with_positives=st.booleans())
def test_threshold_at_fpr_with_heavy_ties_is_the_best_achievable(n, step, scale, seed, with_positives):
    rng = np.random.default_rng(seed)
    # values in [1, 30]: spacing step / 30 >= 0.3 % > bin width (0.1 %), so one distinct value per bin
    negatives = np.clip(np.round((1.0 + rng.exponential(scale, n)) / step) * step, 1.0, 30.0).astype(np.float32)
    scores, targets = negatives, np.zeros(n, dtype=bool)
    if with_positives:  # positives (anywhere) must not move a threshold calibrated on the negatives
        extra = np.round(rng.uniform(0.0, 40.0, 50), 1).astype(np.float32)
        scores, targets = np.concatenate([negatives, extra]), np.concatenate([targets, np.ones(50, dtype=bool)])
    result = curves(scores, targets, [0.5])
    distinct = np.unique(negatives)
    tails = [np.mean(negatives >= v) for v in distinct] + [0.0]  # flagging nothing is always possible
    for p in [*FPRS, 0.1, 1.0]:
        point = result.at_bin(result.bin_at_fpr(p))
        measured = float(np.mean(negatives >= np.float32(point.threshold)))
        assert measured <= p
        assert measured == max(t for t in tails if t <= p)
        assert point.fp == np.sum(negatives >= np.float32(point.threshold))


def test_threshold_when_even_the_top_value_is_too_frequent():
    for value in [0.0, 0.25, 2.0**40]:
        negatives = np.full(1000, value, dtype=np.float32)
        result = curves(negatives, np.zeros(1000, dtype=bool))
        point = result.at_bin(result.bin_at_fpr(0.01))
        assert point.fp == 0 and point.threshold > value
        assert np.mean(negatives >= point.threshold) == 0.0


# ---- best Dice -------------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 3000), positive_fraction=st.floats(0.001, 0.9), shift=st.floats(0.0, 3.0),
       zeros=st.floats(0.0, 0.8), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.floats(0.0, 1.0), max_size=4))
def test_best_dice_is_the_maximum_over_all_thresholds(n, positive_fraction, shift, zeros, seed, cuts):
    rng = np.random.default_rng(seed)
    targets = rng.random(n) < positive_fraction
    targets[0] = True
    raw = np.abs(rng.normal(2.0, 1.0, n) + shift * targets)
    scores = np.where(rng.random(n) < zeros * ~targets, 0.0, np.round(raw, 1)).astype(np.float32)  # spacing 0.1
    best = curves(scores, targets, cuts).best_dice()
    assert best is not None
    reference = max(dice_np(scores >= v, targets) for v in np.unique(scores))
    assert best.dice == pytest.approx(reference, abs=1e-12)
    flagged = scores >= np.float32(best.threshold)
    assert dice_np(flagged, targets) == pytest.approx(best.dice, abs=1e-12)
    assert (best.tp, best.fp, best.fn, best.tn) == (
        np.sum(flagged & targets), np.sum(flagged & ~targets), np.sum(~flagged & targets), np.sum(~flagged & ~targets))


# ---- counts at bin edges ---------------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 2**32 - 1),
       picks=st.lists(st.integers(0, N_BINS), min_size=1, max_size=20), near=st.lists(st.integers(-2, 2), max_size=5))
def test_counts_at_any_bin_edge_equal_numpy_thresholding(family, seed, picks, near):
    rng = np.random.default_rng(seed)
    scores, targets = make_data(family, rng, 5000, 0.1)
    result = curves(scores, targets, [0.1, 0.7])
    occupied = ref_index(scores[rng.integers(0, len(scores), len(near))])
    bins = [*picks, *np.clip(occupied + np.array(near, dtype=np.int64), 0, N_BINS), 0, 1, 2, N_BINS - 1, N_BINS]
    for j in bins:
        point = result.at_bin(int(j))
        if j == N_BINS:
            assert point.threshold == math.inf and point.tp == point.fp == 0
            continue
        assert point.threshold == REF_EDGES[j]
        flagged = scores >= np.float32(point.threshold)
        assert point.tp == np.sum(flagged & targets) and point.fp == np.sum(flagged & ~targets)
        assert point.fn == np.sum(~flagged & targets) and point.tn == np.sum(~flagged & ~targets)


# ---- groups ----------------------------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(n=st.integers(0, 2000), n_groups=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       cuts=st.lists(st.floats(0.0, 1.0), max_size=4))
def test_groups_equal_separate_histograms_and_negative_groups_are_skipped(n, n_groups, seed, cuts):
    rng = np.random.default_rng(seed)
    scores, targets = make_data("ties", rng, max(n, 2), 0.2)
    scores, targets = scores[:n], targets[:n]
    groups = rng.integers(-2, n_groups, n).astype(np.int64)
    grouped = histogram(scores, targets, cuts, n_groups=n_groups, groups=groups)
    assert int(grouped.counts.sum()) == np.sum(groups >= 0)
    results = grouped.compute()
    assert len(results) == n_groups
    for g, result in enumerate(results):
        alone = histogram(scores[groups == g], targets[groups == g])
        assert torch.equal(grouped.counts[g], alone.counts[0])
        np.testing.assert_array_equal(result.positive, alone.counts[0, 1].numpy())
        np.testing.assert_array_equal(result.negative, alone.counts[0, 0].numpy())


# ---- curves for plots ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("max_points", [None, 1000, 25])
def test_roc_and_pr_curves_are_well_formed(family, max_points):
    scores, targets = make_data(family, np.random.default_rng(7), 20_000, 0.1)
    result = curves(scores, targets)
    roc = result.roc(max_points)
    fpr, tpr, thresholds = (np.array(roc[k]) for k in ("fpr", "tpr", "threshold"))
    assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, math.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)
    if max_points is not None:
        assert len(fpr) <= max_points + 1
    # every point is an exact operating point: numpy thresholding at its threshold gives it
    for f, t, threshold in list(zip(fpr, tpr, thresholds, strict=True))[1:: max(1, len(fpr) // 10)]:
        flagged = scores >= np.float32(threshold)
        assert f == np.sum(flagged & ~targets) / np.sum(~targets) and t == np.sum(flagged & targets) / np.sum(targets)
    pr = result.pr(max_points)
    recall, precision = np.array(pr["recall"]), np.array(pr["precision"])
    assert np.all(np.diff(recall) >= 0) and recall[-1] == 1.0
    assert np.all((precision >= 0) & (precision <= 1)) and precision[-1] == pytest.approx(targets.mean())
    assert np.all(np.diff(pr["threshold"]) < 0)


# ---- input handling ------------------------------------------------------------------------------------------------
def test_update_does_not_modify_the_callers_targets():
    targets = torch.tensor([0, 2, -1, 1], dtype=torch.int32)
    PixelHistogram().update(torch.tensor([1.0, 2.0, 3.0, 4.0]), targets)
    assert targets.tolist() == [0, 2, -1, 1]


def test_nonzero_targets_are_positives():
    metric = PixelHistogram()
    metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -1.0, 0.0]))
    assert metric.compute()[0].n_positive == 2


def test_group_ids_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="group id 3 >= n_groups"):
        PixelHistogram(n_groups=2).update(torch.rand(4), torch.zeros(4), torch.tensor([0, 1, 3, 0]))
