"""Leaderboard rebuild time with subject-bootstrap intervals and the paired tests against ``random``.

    python benchmarks/leaderboard.py [--entries 20] [--seeds 3] [--subjects 4] [--pixels 60000] [--rounds 3]

Writes a fake sweep into a temporary folder: ``--entries`` methods (the first named ``random``) x one dataset x
4 test sets (``healthy``, ``tumor``, ``ms``, ``stroke``) x ``--seeds`` seeds. Each run folder gets a
``metrics.json`` (pixel AUROC / AUPRC and pooled Dice at three thresholds, computed from its counts) and a
``subject_counts.npz`` written by the real writer: ``--subjects`` subjects per test set, ``--pixels`` roi pixels
each, scores ``exp(N(0, 1.5))`` with 20 % exact zeros, lesion pixels (3 % on the lesion sets) shifted up by a
method-dependent amount, binned on the evaluator's per-subject layout (``SUBJECT_BINS``). Generation is not timed.

Then ``build_leaderboard`` runs ``--rounds`` times in this process, each **cold** (the in-process cache of per-run
replicates emptied first: every file read, every run resampled; what one SLURM job's rebuild costs) and each
**warm** (the cache holds every run but one, whose folder is touched: what the sweep runner's rebuild after a job
costs), and ``--rounds`` times after the ``subject_counts.npz`` files are deleted (a leaderboard of older runs,
without intervals). Printed: the median and minimum seconds per build.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmark.leaderboard as leaderboard
from benchmark.leaderboard import build_leaderboard
from benchmark.metrics.curves import BinnedCurves
from benchmark.metrics.evaluator import SUBJECT_BINS, subject_layout
from benchmark.metrics.subject_counts import SUBJECT_COUNTS_NAME, SubjectCounts, write_subject_counts

TEST_SETS = ("healthy", "tumor", "ms", "stroke")
THRESHOLDS = {"healthy_fpr@1%": 8.0, "healthy_fpr@2%": 6.0, "healthy_fpr@5%": 4.0}


def subject_counts(rng: np.random.Generator, n_subjects: int, pixels: int, lesion: float,
                   shift: float) -> tuple[SubjectCounts, dict]:
    """Counts of one test set of one run, and its ``metrics.json`` entry."""
    histogram = np.zeros((n_subjects, 2, SUBJECT_BINS.n_bins), dtype=np.int64)
    calibrated = np.zeros((n_subjects, len(THRESHOLDS), 4), dtype=np.int64)
    for s in range(n_subjects):
        target = rng.random(pixels) < lesion
        scores = np.exp(rng.normal(0.0, 1.5, pixels) + shift * target).astype(np.float32)
        scores[rng.random(pixels) < 0.2] = 0.0
        index = SUBJECT_BINS.index(torch.from_numpy(scores)).numpy()
        histogram[s] = np.stack([np.bincount(index[target == value], minlength=SUBJECT_BINS.n_bins)
                                 for value in (False, True)])
        for t, threshold in enumerate(THRESHOLDS.values()):
            flags = scores >= threshold
            calibrated[s, t] = [np.sum(flags & target), np.sum(flags & ~target), np.sum(~flags & target),
                                np.sum(~flags & ~target)]
    counts = SubjectCounts.from_histogram([f"sub{s:03d}" for s in range(n_subjects)], histogram, list(THRESHOLDS),
                                          calibrated, subject_layout())
    pooled = histogram.sum(0)
    curves = BinnedCurves(pooled[1], pooled[0], SUBJECT_BINS.lower_edges())
    summed = calibrated.sum(0)
    dice = {name: {"threshold": value, "dice": 2 * int(summed[t, 0]) / max(int(2 * summed[t, 0] + summed[t, 1]
                                                                               + summed[t, 2]), 1)}
            for t, (name, value) in enumerate(THRESHOLDS.items())}
    result = {"pixel": {"auroc": curves.auroc(), "auprc": curves.average_precision()}, "calibrated": dice}
    return counts, json.loads(json.dumps(result).replace("NaN", "null"))


def write_sweep(root: Path, entries: int, seeds: int, n_subjects: int, pixels: int) -> None:
    rng = np.random.default_rng(0)
    for m in range(entries):
        method = "random" if m == 0 else f"method{m:02d}"
        for seed in range(seeds):
            folder = root / "runs" / "synthetic_brain" / method / f"seed_{seed}"
            folder.mkdir(parents=True)
            counts, results = {}, {}
            for test_set in TEST_SETS:
                lesion = 0.0 if test_set == "healthy" else 0.03
                counts[None, test_set], results[test_set] = subject_counts(rng, n_subjects, pixels, lesion,
                                                                           0.05 * m)
            key = f"{method}-{seed}"
            write_subject_counts(folder / SUBJECT_COUNTS_NAME, counts, key)
            (folder / "metrics.json").write_text(json.dumps({
                "schema": "normbench.metrics/2", "status": "completed", "method": method, "dataset": "synthetic_brain",
                "seed": seed, "key": key, "test_sets": results, "run": {}, "versions": {}}))


def timed_builds(root: Path, rounds: int, warm: bool = False) -> list[float]:
    """Seconds per build; ``warm``: the cache holds every run except one rewritten since the last build."""
    paths = sorted(root.glob(f"runs/*/*/*/{SUBJECT_COUNTS_NAME}"))
    times = []
    for i in range(rounds):
        if warm:
            build_leaderboard(root)
            stat = paths[i % len(paths)].stat()
            os.utime(paths[i % len(paths)], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))  # a rerun job
        else:
            leaderboard._SEED_CACHE.clear()
        start = time.perf_counter()
        build_leaderboard(root)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--pixels", type=int, default=60000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_sweep(root, args.entries, args.seeds, args.subjects, args.pixels)
        bins = [np.load(path)["e1_bins"].size for path in root.glob(f"runs/*/*/*/{SUBJECT_COUNTS_NAME}")]
        cold = timed_builds(root, args.rounds)
        warm = timed_builds(root, args.rounds, warm=True)
        board = build_leaderboard(root)
        for path in root.glob(f"runs/*/*/*/{SUBJECT_COUNTS_NAME}"):
            path.unlink()
        without = timed_builds(root, args.rounds)
    rows = len(board)
    print(f"{args.entries} entries x {len(TEST_SETS)} test sets x {args.seeds} seeds ({rows} rows), "
          f"{args.subjects} subjects per test set, {int(np.median(bins))} occupied bins per run and test set (median)")
    print("| leaderboard build | median s | min s |")
    print("|---|---:|---:|")
    for label, times in (("cold: every run resampled (intervals + tests)", cold),
                         ("warm: one new run since the last build", warm), ("without subject_counts.npz", without)):
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} |")
    beats = board.loc[board["test_set"] == "tumor", "beats_random"].value_counts().to_dict()
    print(f"\n(beats_random on tumor: {beats})")


if __name__ == "__main__":
    main()
