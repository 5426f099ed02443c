"""Pixel AUROC + average precision: the histogram engine vs scikit-learn vs exact torchmetrics, in one run.

    python benchmarks/metrics.py [--sizes 1e6 1e7 5e7] [--chunk 1000000] [--seed 0] [--threads N] [--quick]

Three implementations compute pixel AUROC and average precision (AP) of the same synthetic pixels:

* ``engine``: NormBench's ``PixelHistogram`` (``benchmark/metrics/histogram.py``), fed chunk by chunk the way
  batches arrive, then ``compute()[0].auroc()`` and ``.average_precision()``;
* ``scikit-learn``: ``roc_auc_score`` + ``average_precision_score`` on the full arrays (float32 scores, bool
  targets), i.e. every pixel held in memory at once;
* ``torchmetrics exact``: ``BinaryAUROC`` + ``BinaryAveragePrecision`` with ``thresholds=None`` (two separate
  metrics, both updated with every chunk, then ``compute()``); they keep every score until ``compute``.
  ``normalization=None`` is passed: the default applies a sigmoid to any chunk with scores outside [0, 1], which
  saturates large anomaly scores in float32 and turns them into ties.

Data: pixel ``i`` belongs to chunk ``i // chunk``; each chunk is drawn from its own generator seeded with
``(seed, chunk index)``, so all implementations see the same pixels. Targets are positive with probability 5 %;
scores are ``exp(z)`` with ``z ~ N(0, 1)`` plus 1.2 for positives (float32, >= 0, AUROC about 0.8).

Each (implementation, size) runs in its own fresh Python process (``--worker``), which imports everything first.
What is measured there:

* ``wall s``: only the metric work. Engine and torchmetrics: the sum of the ``update`` calls plus ``compute`` and
  reading the two numbers; generating a chunk is not timed. scikit-learn: the two function calls.
* peak memory, from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's high-water mark):
  - ``rss_start``: after imports;
  - ``rss_input``: after the input the implementation holds before its metric work is in memory: the full arrays
    for scikit-learn (5 bytes per pixel), one chunk for the engine and torchmetrics;
  - ``rss_end``: after the metric work.
  ``extra peak MB (metric)`` = ``rss_end - rss_input``: what computing the metric adds on top of its input (for
  torchmetrics this includes every score it keeps). ``peak MB incl. input`` = ``rss_end - rss_start``: the same
  plus the input, which for scikit-learn is all pixels at once. Data are generated in place into preallocated
  buffers, so generation leaves no temporaries that would raise the high-water mark before the baseline.
* ``abs dAUROC`` / ``abs dAP``: absolute difference from scikit-learn's values for the same size (the reference).

``--threads N`` sets ``torch.set_num_threads(N)`` in every worker (default: torch's own choice, as in a training
job); it matters for the engine and torchmetrics, while scikit-learn's sorts run on one core either way. The
engine also runs a second time with one thread (``engine, 1 thread``): the like-for-like comparison with
scikit-learn, and a guard against thread contention on shared machines, which can slow a two-thread pool
several-fold.

Prints a Markdown table for docs/performance.md. Timings on shared machines are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

POSITIVE_FRACTION = 0.05
POSITIVE_SHIFT = 1.2
IMPLEMENTATIONS = ("engine", "engine, 1 thread", "scikit-learn", "torchmetrics exact")
SINGLE_THREAD = ", 1 thread"  # the engine again with torch.set_num_threads(1): scikit-learn's sorts use one core
ROOT = Path(__file__).resolve().parents[1]


# ---- data ------------------------------------------------------------------------------------------------------
def chunk_bounds(n_pixels: int, chunk: int) -> list[tuple[int, int]]:
    return [(low, min(low + chunk, n_pixels)) for low in range(0, n_pixels, chunk)]


def fill_chunk(seed: int, index: int, scores: np.ndarray, targets: np.ndarray) -> None:
    """Write chunk ``index``'s pixels into ``scores`` (float32) and ``targets`` (bool) without temporaries."""
    rng = np.random.default_rng([seed, index])
    rng.random(out=scores, dtype=np.float32)
    np.less(scores, POSITIVE_FRACTION, out=targets)
    rng.standard_normal(out=scores, dtype=np.float32)
    np.add(scores, np.float32(POSITIVE_SHIFT), out=scores, where=targets)
    np.exp(scores, out=scores)


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux


# ---- workers (one per process) ---------------------------------------------------------------------------------
def run_engine(n_pixels: int, chunk: int, seed: int) -> dict:
    from benchmark.metrics.histogram import PixelHistogram

    bounds = chunk_bounds(n_pixels, chunk)
    width = bounds[0][1] - bounds[0][0]
    scores, targets = np.empty(width, dtype=np.float32), np.empty(width, dtype=bool)
    fill_chunk(seed, 0, scores, targets)  # touch the one-chunk input buffers before the baseline
    rss_input = max_rss_kb()
    seconds = 0.0
    start = time.perf_counter()
    metric = PixelHistogram()
    seconds += time.perf_counter() - start
    for index, (low, high) in enumerate(bounds):
        size = high - low
        fill_chunk(seed, index, scores[:size], targets[:size])
        start = time.perf_counter()
        metric.update(torch.from_numpy(scores[:size]), torch.from_numpy(targets[:size]))
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    curves = metric.compute()[0]
    auroc, ap = curves.auroc(), curves.average_precision()
    seconds += time.perf_counter() - start
    return {"seconds": seconds, "rss_input": rss_input, "auroc": auroc, "ap": ap}


def run_sklearn(n_pixels: int, chunk: int, seed: int) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, targets = np.empty(n_pixels, dtype=np.float32), np.empty(n_pixels, dtype=bool)
    for index, (low, high) in enumerate(chunk_bounds(n_pixels, chunk)):
        fill_chunk(seed, index, scores[low:high], targets[low:high])
    rss_input = max_rss_kb()
    start = time.perf_counter()
    auroc = float(roc_auc_score(targets, scores))
    ap = float(average_precision_score(targets, scores))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_input": rss_input, "auroc": auroc, "ap": ap}


def run_torchmetrics(n_pixels: int, chunk: int, seed: int) -> dict:
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

    bounds = chunk_bounds(n_pixels, chunk)
    seconds = 0.0
    chunks = []
    for index, (low, high) in enumerate(bounds):
        # Fresh arrays per chunk: the metrics keep references to what they are given (no copy without a sigmoid).
        scores, targets = np.empty(high - low, dtype=np.float32), np.empty(high - low, dtype=bool)
        fill_chunk(seed, index, scores, targets)
        chunks.append((torch.from_numpy(scores), torch.from_numpy(targets)))
        del scores, targets
        if index == 0:
            rss_input = max_rss_kb()
            start = time.perf_counter()
            auroc_metric = BinaryAUROC(thresholds=None, normalization=None)
            ap_metric = BinaryAveragePrecision(thresholds=None, normalization=None)
            seconds += time.perf_counter() - start
        start = time.perf_counter()
        auroc_metric.update(*chunks[-1])
        ap_metric.update(*chunks[-1])
        seconds += time.perf_counter() - start
        chunks.clear()  # only the metrics' own references remain
    start = time.perf_counter()
    auroc, ap = float(auroc_metric.compute()), float(ap_metric.compute())
    seconds += time.perf_counter() - start
    return {"seconds": seconds, "rss_input": rss_input, "auroc": auroc, "ap": ap}


WORKERS = {"engine": run_engine, "scikit-learn": run_sklearn, "torchmetrics exact": run_torchmetrics}


def worker(impl: str, n_pixels: int, chunk: int, seed: int, threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))  # the engine lives in the repository's ``benchmark`` package
    import sklearn.metrics  # noqa: F401  (import everything before the first reading)
    import torchmetrics.classification  # noqa: F401

    import benchmark.metrics.histogram  # noqa: F401

    rss_start = max_rss_kb()
    result = WORKERS[impl](n_pixels, chunk, seed)
    result.update(impl=impl, pixels=n_pixels, rss_start=rss_start, rss_end=max_rss_kb(),
                  threads=torch.get_num_threads())
    print(json.dumps(result))


# ---- driver ----------------------------------------------------------------------------------------------------
def measure(impl: str, n_pixels: int, chunk: int, seed: int, threads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, str(n_pixels),
               "--chunk", str(chunk), "--seed", str(seed), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} at {n_pixels:,} pixels failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    reference = {r["pixels"]: r for r in results if r["impl"] == "scikit-learn"}
    lines = ["| impl | pixels | wall s | extra peak MB (metric) | peak MB incl. input | sklearn time / impl time "
             "| abs dAUROC | abs dAP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ref = reference.get(r["pixels"])
        if ref is None:
            ratio = d_auroc = d_ap = "n/a"
        else:
            ratio = f"{ref['seconds'] / r['seconds']:,.1f}x"
            d_auroc = f"{abs(r['auroc'] - ref['auroc']):.1e}" if r is not ref else "(reference)"
            d_ap = f"{abs(r['ap'] - ref['ap']):.1e}" if r is not ref else "(reference)"
        extra = (r["rss_end"] - r["rss_input"]) / 1024
        total = (r["rss_end"] - r["rss_start"]) / 1024
        lines.append(f"| {r['impl']} | {r['pixels']:,} | {r['seconds']:.3f} | {extra:,.0f} | {total:,.0f} "
                     f"| {ratio} | {d_auroc} | {d_ap} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 5e7], help="pixel counts")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="pixels per update (one batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 1e5 and 1e6")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "PIXELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk < 1:
        parser.error("--chunk must be >= 1")

    if args.worker:
        impl, n_pixels = args.worker
        worker(impl, int(n_pixels), args.chunk, args.seed, args.threads)
        return

    sizes = [100_000, 1_000_000] if args.quick else [int(s) for s in args.sizes]
    results = []
    for n_pixels in sizes:
        for impl in IMPLEMENTATIONS:
            print(f"{impl} at {n_pixels:,} pixels ...", file=sys.stderr, flush=True)
            if impl.endswith(SINGLE_THREAD):
                r = measure(impl.removesuffix(SINGLE_THREAD), n_pixels, args.chunk, args.seed, 1)
                r["impl"] = impl
            else:
                r = measure(impl, n_pixels, args.chunk, args.seed, args.threads)
            results.append(r)
            print(f"  {r['seconds']:.3f} s, AUROC {r['auroc']:.6f}, AP {r['ap']:.6f}", file=sys.stderr, flush=True)
    print(table(results))
    print(f"\n(chunk {args.chunk:,} pixels, seed {args.seed}, {results[0]['threads']} torch threads, "
          f"{os.cpu_count()} CPUs, AUROC {results[-1]['auroc']:.4f}, AP {results[-1]['ap']:.4f})")


if __name__ == "__main__":
    main()
