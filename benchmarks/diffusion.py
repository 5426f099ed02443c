"""AnoDDPM training and sampling speed per precision (fp32 vs bf16, and fp16 on a GPU), side by side in one process.

    python benchmarks/diffusion.py [--method anoddpm] [--faithful] [--size 64] [--batch 32] [--train-steps 5]
                                   [--level 250] [--device cpu|cuda] [--precisions 32,bf16] [--rounds 3]

The network and sampler are those of ``configs/methods/<method>.yaml`` (the CPU configuration by default;
``--faithful``: GenAI's network (128, 256, 256) with ancestral DDPM sampling). Each round, for each precision in
turn (interleaved, so that machine noise hits all of them): ``--train-steps`` optimiser steps on a batch of
``--batch`` random images (autocast in the precision, fp32 weights, a gradient scaler for fp16), then one partial
diffusion (AnoDDPM's reconstruction from ``--level``) of the same batch under ``no_grad``. Printed: the median
training steps/s and sampling images/s over the rounds, and their ratios to fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from benchmark.config import ComponentConfig
from lightning_modules.anoddpm import AnoDDPM

REPO = Path(__file__).resolve().parent.parent
FAITHFUL = {"channels": [128, 256, 256], "attention_levels": [False, True, True], "num_res_blocks": 1,
            "num_head_channels": 256, "norm_num_groups": 32, "sampler": "ddpm", "inference_steps": None}
DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[precision])


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_training(model: AnoDDPM, images: torch.Tensor, steps: int, device: str, precision: str) -> float:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16")
    model.train()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device, precision):
            loss = model.noise_prediction_loss(images)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    synchronise(device)
    return steps / (time.perf_counter() - start)


@torch.no_grad()
def time_sampling(model: AnoDDPM, images: torch.Tensor, level: int, device: str, precision: str) -> float:
    model.eval()
    synchronise(device)
    start = time.perf_counter()
    with autocast(device, precision):
        reconstruction = model.reconstruct(images, level)
    synchronise(device)
    assert torch.isfinite(reconstruction).all(), f"non-finite reconstruction in precision {precision}"
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="anoddpm", help="method config (configs/methods) of an AnoDDPM")
    parser.add_argument("--faithful", action="store_true", help="GenAI's network and the ancestral DDPM sampler")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--level", type=int, default=250, help="noise level of the partial diffusion")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="32,bf16", help="comma-separated: 32, bf16, 16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ComponentConfig.from_file(REPO / "configs" / "methods" / f"{args.method}.yaml")
    init_args = {**config.init_args, **(FAITHFUL if args.faithful else {}), "image_size": args.size,
                 "in_channels": 1}
    init_args.pop("max_training_steps", None)
    torch.manual_seed(0)
    model = AnoDDPM(**init_args).to(args.device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(args.batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(0))
    images = images.to(args.device)
    precisions = args.precisions.split(",")
    train: dict[str, list[float]] = {p: [] for p in precisions}
    sample: dict[str, list[float]] = {p: [] for p in precisions}
    calls = len(model.process.grid(args.level))
    for _ in range(args.rounds):
        for precision in precisions:
            model.load_state_dict(initial)  # every precision trains the same weights
            train[precision].append(time_training(model, images, args.train_steps, args.device, precision))
            sample[precision].append(time_sampling(model, images, args.level, args.device, precision))
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.method}{' (faithful network, ddpm sampler)' if args.faithful else ''}: "
          f"{model.num_parameters():,} parameters, {args.size} px, batch {args.batch}, {device_name}; sampling = "
          f"partial diffusion from t={args.level} ({calls} network calls, {model.hparams.sampler}); "
          f"median of {args.rounds} rounds")
    print("| precision | training steps/s | training images/s | sampling images/s | training vs fp32 | "
          "sampling vs fp32 |")
    print("|---|---|---|---|---|---|")
    base_train = statistics.median(train[precisions[0]])
    base_sample = statistics.median(sample[precisions[0]])
    for precision in precisions:
        steps, images_per_s = statistics.median(train[precision]), statistics.median(sample[precision])
        print(f"| {precision} | {steps:.3f} | {steps * args.batch:.1f} | {images_per_s:.2f} | "
              f"{steps / base_train:.2f}x | {images_per_s / base_sample:.2f}x |")


if __name__ == "__main__":
    main()
