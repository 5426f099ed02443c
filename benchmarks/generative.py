"""Best-SSIM generative quality: the factorised filter of ``benchmark/metrics/generative.py`` vs torchmetrics'
functional SSIM on the same sample x reference pairs, side by side in one process.

    python benchmarks/generative.py [--samples 64] [--references 223] [--size 64] [--rounds 3] [--threads N]

Both compute, for each of ``--samples`` random [0, 1] images, the best SSIM (11 x 11 Gaussian window, sigma 1.5,
valid region) against ``--references`` images (defaults: the default sweep's 64 samples against its 223 healthy
test slices at 64 x 64). ``torchmetrics``: one call per chunk of 128 pairs with ``return_full_image=True``, the
border cropped (what the first implementation of the feature did); ``factorised``: :func:`best_ssim`. Printed: the
median seconds over the rounds, the ratio and the largest absolute difference of the best-SSIM values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from benchmark.metrics.generative import BORDER, best_ssim


def torchmetrics_best(samples: torch.Tensor, references: torch.Tensor, pairs: int = 128) -> torch.Tensor:
    best = torch.full((len(samples),), -1.0)
    for i, sample in enumerate(samples):
        for j in range(0, len(references), pairs):
            target = references[j:j + pairs]
            _, full = structural_similarity_index_measure(
                sample.expand_as(target).contiguous(), target, gaussian_kernel=True, sigma=1.5, data_range=1.0,
                reduction="none", return_full_image=True)
            values = full[..., BORDER:-BORDER, BORDER:-BORDER].mean(dim=(1, 2, 3))
            best[i] = max(best[i], values.max())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--references", type=int, default=223)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    samples = torch.rand(args.samples, 1, args.size, args.size, generator=generator)
    references = torch.rand(args.references, 1, args.size, args.size, generator=generator)
    times: dict[str, list[float]] = {"factorised": [], "torchmetrics": []}
    results = {}
    for _ in range(args.rounds):  # interleaved, so that machine noise hits both
        for name, function in (("factorised", best_ssim), ("torchmetrics", torchmetrics_best)):
            start = time.perf_counter()
            results[name] = function(samples, references)
            times[name].append(time.perf_counter() - start)
    fast, slow = statistics.median(times["factorised"]), statistics.median(times["torchmetrics"])
    print(f"{args.samples} samples x {args.references} references, {args.size} px, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds")
    print(f"factorised   {fast:8.2f} s")
    print(f"torchmetrics {slow:8.2f} s")
    difference = float((results["factorised"] - results["torchmetrics"]).abs().max())
    print(f"speed-up     {slow / fast:8.1f}x   max |difference| {difference:.2e}")


if __name__ == "__main__":
    main()
