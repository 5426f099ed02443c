"""Subject-level bootstrap intervals and a paired bootstrap test against a reference entry (numpy only).

Our reading of "subject-level bootstrap 95 % intervals pooled over seeds" is a **two-level (hierarchical)
bootstrap** over the per-subject counts of :mod:`benchmark.metrics.subject_counts`. Replicate ``b`` of one
leaderboard entry (method x dataset x test set, ``K`` completed seeds):

1. draws ``S`` test subjects with replacement (:func:`subject_weights`); the draw depends only on the resampling
   seed and ``S``, so every entry of the same dataset x test set sees the same subject draws (paired comparisons);
2. draws the entry's ``K`` seeds with replacement (:func:`seed_weights`; a stream of its own, keyed by the CRC-32
   of the entry's name, so two entries' seed draws are independent; nothing is drawn for one seed);
3. computes each drawn seed's metric on the pooled counts of the drawn subjects (a subject drawn twice counts
   twice): pixel AUROC and AUPRC (average precision) from the per-subject coarse histograms, with the arithmetic
   of :class:`~benchmark.metrics.curves.BinnedCurves` (float64 cumulative sums walked from the highest bin down),
   and pooled Dice at every calibrated threshold from the per-subject confusion counts;
4. averages them over the drawn seeds: the replicate statistic ``T(b)``.

The interval is the percentile interval ``[alpha / 2, 1 - alpha / 2]`` of ``T`` over the ``B`` replicates
(:data:`RESAMPLES` = 1000, :data:`RESAMPLE_SEED` = 0, :data:`ALPHA` = 0.05). With one seed it is a plain subject
bootstrap of the run. Replicates in which a metric is undefined (no lesion pixel among the drawn subjects) are left
out of its interval; none left: NaN.

Centring of the pixel metrics: per-subject histograms use coarse bins (relative width ~3 %, see
``SUBJECT_BINS`` in :mod:`benchmark.metrics.evaluator`), whose ties lower AUPRC by up to ~0.02 for maps with a
narrow score distribution (AUROC by < 1e-3). Each seed's pixel replicates are therefore shifted by its fine-binned
value (``metrics.json``, kept in ``SubjectCounts.fine``) minus its coarse value on all subjects, and clipped to
[0, 1]: the bootstrap distribution is centred on the reported estimate, and the remaining binning error of a
replicate (the change of that bias across subject draws) stays below 5e-3 in ``tests/test_bootstrap.py``. Dice
needs no centring: its per-subject counts are exact.

The paired test of an entry against a reference (``random``): ``d(b) = T_entry(b) - T_ref(b)`` on the same subject
draws; one-sided p-value ``p = (1 + #{b : d(b) <= 0}) / (B' + 1)`` over the ``B'`` replicates where both are
defined (:func:`paired_p_value`); the entry beats the reference when ``p < alpha``.

Deterministic: the same inputs give the same draws on any machine and numpy version (numpy's PCG64 bit generator
seeded by a ``SeedSequence``, both fixed algorithms, unlike ``Generator`` methods, whose streams may change between
numpy versions; an index is the top 32 bits of a raw 64-bit output times ``n``, shifted right by 32, with a bias
below ``n / 2**32``). Pooled counts are integer-valued float64 sums, exact whatever the BLAS; the metrics are
float64 arithmetic on them.
"""

from __future__ import annotations

import contextlib
import functools
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.metrics.subject_counts import SubjectCounts

RESAMPLES = 1000  # bootstrap replicates B
RESAMPLE_SEED = 0  # seed of every draw (subjects and seeds)
ALPHA = 0.05  # two-sided 95 % percentile intervals; one-sided level of the paired test
PIXEL_METRICS = ("pixel/auroc", "pixel/auprc")
_SUBJECT_STREAM, _SEED_STREAM = 0, 1
_CHUNK = 250  # replicates per block of array work (bounds memory: a few [chunk, n_bins] float64 arrays)


def calibrated_dice(threshold: str) -> str:
    """Leaderboard name of the pooled Dice at a calibrated threshold."""
    return f"calibrated/{threshold}/dice"


@dataclass(frozen=True)
class Resampling:
    """How replicates are drawn: their number, the seed, the interval level."""

    resamples: int = RESAMPLES
    seed: int = RESAMPLE_SEED
    alpha: float = ALPHA

    def __post_init__(self) -> None:
        if self.resamples < 1 or not 0 < self.alpha < 1 or self.seed < 0:
            raise ValueError(f"Resampling: need resamples >= 1, 0 < alpha < 1, seed >= 0, got {self}")

    def describe(self) -> dict[str, Any]:
        return {"resamples": self.resamples, "seed": self.seed, "alpha": self.alpha, "unit": "subject",
                "interval": f"percentile {100 * (1 - self.alpha):g} %",
                "levels": "metrics.json: subjects drawn with replacement; leaderboard: seeds and subjects (two-level)"}


DEFAULT_RESAMPLING = Resampling()


# ---- draws ------------------------------------------------------------------------------------------------------
def draw_multiplicities(n: int, resamples: int, *keys: int) -> np.ndarray:
    """``[resamples, n]`` float64: how often each of ``n`` items is drawn in each of ``resamples`` draws of ``n``
    with replacement, from PCG64 seeded by ``SeedSequence(keys)`` (see the module docstring)."""
    if not 0 < n < 2**32:
        raise ValueError(f"need 0 < n < 2**32 items to draw from, got {n}")
    raw = np.random.PCG64(np.random.SeedSequence(list(keys))).random_raw(resamples * n)
    index = ((raw >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)
    flat = index.astype(np.int64) + n * np.repeat(np.arange(resamples, dtype=np.int64), n)
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def subject_weights(n_subjects: int, resampling: Resampling = DEFAULT_RESAMPLING) -> np.ndarray:
    """``[B, S]`` subject multiplicities, shared by every entry with ``S`` subjects (same resampling)."""
    return draw_multiplicities(n_subjects, resampling.resamples, resampling.seed, _SUBJECT_STREAM)


def seed_weights(n_seeds: int, entry: str, resampling: Resampling = DEFAULT_RESAMPLING) -> np.ndarray:
    """``[B, K]`` seed multiplicities of one entry (all ones for one seed: nothing to draw)."""
    if n_seeds == 1:
        return np.ones((resampling.resamples, 1))
    stream = zlib.crc32(entry.encode("utf-8"))
    return draw_multiplicities(n_seeds, resampling.resamples, resampling.seed, _SEED_STREAM, stream)


# ---- metrics of pooled counts, vectorised over replicates ------------------------------------------------------
def ranking_replicates(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision per row of ``[B, n]`` counts per bin, **highest bin first**.

    :class:`~benchmark.metrics.curves.BinnedCurves`' arithmetic: every bin a candidate threshold, float64 cumulative
    sums ``tp``, ``fp`` walked from the highest bin down; the same trapezoids, summed per bin
    (``AUROC = sum_i N_i (tp_i + tp_(i-1)) / (2 n_pos n_neg)``), and the same step sum
    (``AP = sum_i P_i tp_i / (tp_i + fp_i) / n_pos``). Bins empty in a row add exact zeros. NaN where a row has no
    positives (AUROC also where it has no negatives)."""
    if positive.shape[1] == 0:  # no roi pixel at all
        return np.full(len(positive), math.nan), np.full(len(positive), math.nan)
    tp = np.cumsum(positive, axis=1)
    fp = np.cumsum(negative, axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    area = np.einsum("bn,bn->b", negative, 2.0 * tp - positive)  # 2 x trapezoid area, in pixel pairs
    total = tp + fp
    np.maximum(total, 1.0, out=total)  # empty leading bins: no positive gained there either
    gain = np.einsum("bn,bn->b", positive, tp / total)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = np.where((n_pos > 0) & (n_neg > 0), area / (2.0 * n_pos * n_neg), math.nan)
        ap = np.where(n_pos > 0, gain / n_pos, math.nan)
    return auroc, ap


def dice_replicates(counts: np.ndarray) -> np.ndarray:
    """Pooled Dice per row of ``[..., 4]`` (tp, fp, fn, tn) counts; NaN without lesion pixels."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tp + fn > 0, 2.0 * tp / (2.0 * tp + fp + fn), math.nan)


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries (scanned once), or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a scikit-learn dependency
        return None
    return ThreadpoolController()


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread: these products are small, and a multi-threaded BLAS beside torch's thread pool was 30x
    slower on them (measured on 2 cores)."""
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def _centre(auroc: np.ndarray, ap: np.ndarray, total: np.ndarray, n_bins: int, fine: Mapping[str, float]) -> None:
    """Shift the replicates (in place) by the fine-binned value minus the coarse value on all subjects (``total``:
    ``[1, 2 n]`` summed counts), clipped to [0, 1]; nothing for a metric without a finite fine value."""
    coarse = ranking_replicates(total[:, n_bins:], total[:, :n_bins])
    for values, name, full in ((auroc, "pixel/auroc", coarse[0][0]), (ap, "pixel/auprc", coarse[1][0])):
        reference = fine.get(name, math.nan)
        if math.isfinite(reference) and math.isfinite(full):
            np.clip(values + (reference - full), 0.0, 1.0, out=values)


def replicate_metrics(counts: SubjectCounts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric (``pixel/auroc``, ``pixel/auprc``, ``calibrated/<threshold>/dice``) of the pooled counts of the
    subjects weighted by each row of ``weights`` ``[B, S]``: ``{name: [B]}``; pixel metrics centred on
    ``counts.fine`` (module docstring)."""
    n_subjects, n_bins = len(counts.subjects), len(counts.bins)
    if weights.shape[1] != n_subjects:
        raise ValueError(f"weights for {weights.shape[1]} subjects, counts of {n_subjects}")
    n_thresholds = len(counts.thresholds)
    auroc, ap = np.full(len(weights), math.nan), np.full(len(weights), math.nan)
    with _single_threaded_blas():
        if counts.pixels[:, 1].any():  # else no replicate has a lesion pixel: both undefined
            pixels = counts.pixels[:, :, ::-1].reshape(n_subjects, 2 * n_bins).astype(np.float64)  # highest first
            for start in range(0, len(weights), _CHUNK):
                block = slice(start, start + _CHUNK)
                pooled = weights[block] @ pixels
                auroc[block], ap[block] = ranking_replicates(pooled[:, n_bins:], pooled[:, :n_bins])
            _centre(auroc, ap, pixels.sum(axis=0, keepdims=True), n_bins, counts.fine)
        calibrated = counts.calibrated.reshape(n_subjects, 4 * n_thresholds).astype(np.float64)
        pooled = (weights @ calibrated).reshape(len(weights), n_thresholds, 4)
    out = {"pixel/auroc": auroc, "pixel/auprc": ap}
    for t, name in enumerate(counts.thresholds):
        out[calibrated_dice(name)] = dice_replicates(pooled[:, t])
    return out


# ---- entries: seeds x subjects --------------------------------------------------------------------------------
def combine_seeds(per_seed: Sequence[Mapping[str, np.ndarray]], weights: np.ndarray) -> dict[str, np.ndarray]:
    """``T(b)``: the mean over the drawn seeds (``weights`` ``[B, K]`` multiplicities) of each seed's replicate
    metric, for the metrics every seed has; NaN where a drawn seed's metric is NaN."""
    n_seeds = len(per_seed)
    names = [name for name in per_seed[0] if all(name in seed for seed in per_seed[1:])]
    out = {}
    for name in names:
        values = np.stack([seed[name] for seed in per_seed], axis=1)  # [B, K]
        out[name] = np.where(weights > 0, weights * values, 0.0).sum(axis=1) / n_seeds
    return out


def entry_replicates(seeds: Sequence[SubjectCounts], entry: str,
                     resampling: Resampling = DEFAULT_RESAMPLING) -> dict[str, np.ndarray]:
    """The two-level bootstrap replicates ``{metric: [B]}`` of one entry from its seeds' counts (same subjects)."""
    if not seeds:
        raise ValueError("no seed to resample")
    subjects = seeds[0].subjects
    if any(seed.subjects != subjects for seed in seeds[1:]):
        raise ValueError(f"{entry}: the seeds were tested on different subjects")
    weights = subject_weights(len(subjects), resampling)
    per_seed = [replicate_metrics(seed, weights) for seed in seeds]
    return combine_seeds(per_seed, seed_weights(len(seeds), entry, resampling))


# ---- summaries --------------------------------------------------------------------------------------------------
def percentile_interval(replicates: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """``(low, high)``: the ``alpha / 2`` and ``1 - alpha / 2`` percentiles of the finite replicates (NaN if none)."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [50 * alpha, 100 - 50 * alpha])
    return float(low), float(high)


def paired_p_value(entry: np.ndarray, reference: np.ndarray) -> float:
    """One-sided bootstrap p-value of "entry > reference": ``(1 + #{d <= 0}) / (B' + 1)``, ``d = entry -
    reference`` per replicate, over the ``B'`` replicates where both are finite (NaN when there is none)."""
    difference = entry - reference
    difference = difference[np.isfinite(difference)]
    if len(difference) == 0:
        return math.nan
    return float((1 + np.count_nonzero(difference <= 0)) / (len(difference) + 1))


def run_intervals(counts: SubjectCounts,
                  resampling: Resampling = DEFAULT_RESAMPLING) -> dict[str, tuple[float, float]]:
    """The single-run subject-bootstrap interval of every metric of one test set's counts."""
    replicates = replicate_metrics(counts, subject_weights(len(counts.subjects), resampling))
    return {name: percentile_interval(values, resampling.alpha) for name, values in replicates.items()}
