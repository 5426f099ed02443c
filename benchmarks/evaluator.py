"""Cost of the whole evaluator per test batch, as inside Lightning's test loop.

    python benchmarks/evaluator.py [--batches 28] [--batch-size 32] [--size 64] [--threads 0]

Feeds ``--batches`` batches of random maps (roi 70 % of each slice, 2 % lesion pixels, subjects of 32 slices) to a
``TestSetEvaluator`` with three calibrated thresholds, for the ``none`` and ``baur`` post-processing profiles, and
prints the mean wall time per batch of ``update`` (after one warm-up pass) and of the final ``compute``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.metrics import PROFILES, EvaluationSettings, SetLayout, TestSetEvaluator
from lightning_modules.base import AnomalyOutput


def make_batches(n: int, batch: int, size: int, seed: int = 0) -> tuple[list, SetLayout]:
    generator = torch.Generator().manual_seed(seed)
    subjects = np.repeat([f"s{i:03d}" for i in range(n)], batch)
    batches, areas = [], []
    for i in range(n):
        mask = (torch.rand(batch, 1, size, size, generator=generator) < 0.02).float()
        roi = (torch.rand(batch, 1, size, size, generator=generator) < 0.7).float()
        areas.extend(mask.flatten(1).sum(1).long().tolist())
        data = {"mask": mask, "roi": roi, "label": (mask.flatten(1).sum(1) > 0).long(),
                "subject": list(subjects[i * batch:(i + 1) * batch]), "slice": torch.arange(batch)}
        output = AnomalyOutput(torch.rand(batch, 1, size, size, generator=generator),
                               torch.rand(batch, generator=generator))
        batches.append((data, output))
    return batches, SetLayout(subjects, np.asarray(areas))


def measure(profile: str, batches: list, layout: SetLayout) -> tuple[float, float]:
    settings = EvaluationSettings(postprocessing=PROFILES[profile])
    thresholds = {"healthy_fpr@1%": 0.99, "healthy_fpr@2%": 0.98, "healthy_fpr@5%": 0.95}
    TestSetEvaluator(settings, layout, thresholds).update(*batches[0])  # warm-up
    evaluator = TestSetEvaluator(settings, layout, thresholds)
    start = time.perf_counter()
    for data, output in batches:
        evaluator.update(data, output)
    per_batch = (time.perf_counter() - start) / len(batches)
    start = time.perf_counter()
    evaluator.compute()
    return per_batch, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    batches, layout = make_batches(args.batches, args.batch_size, args.size)
    print(f"| profile | update ms / batch ({args.batch_size} x {args.size} x {args.size}) | compute s |")
    print("|---|---:|---:|")
    for profile in ("none", "baur"):
        per_batch, compute = measure(profile, batches, layout)
        print(f"| {profile} | {1000 * per_batch:.1f} | {compute:.3f} |")
    print(f"\n({torch.get_num_threads()} torch threads, {args.batches} batches)")


if __name__ == "__main__":
    main()
