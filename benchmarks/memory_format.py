"""Training speed of each method's networks in PyTorch's two CPU memory formats, side by side in one process.

    python benchmarks/memory_format.py [--methods ae,vae,fanogan,dcgan,ascnet,anoddpm] [--size 64] [--batch 32]
                                       [--threads 1] [--rounds 5]

For every method config (``configs/methods/<name>.yaml``, its CPU configuration) each of its networks (every direct
child module with parameters that takes an image: encoders, decoders, generators' image-producing nets are timed
through the method's own forward path, see :func:`workloads`) runs forward + backward on a batch of random images,
once with contiguous (NCHW) tensors and once with ``torch.channels_last`` (NHWC) tensors and weights. The rounds
interleave the two formats, so machine noise hits both; printed: the median milliseconds per step and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmark.config import load_component  # noqa: E402

Workload = Callable[[torch.memory_format], Tensor]


def workloads(name: str, size: int, batch: int) -> dict[str, tuple[nn.Module, Workload]]:
    """Named (module, loss function) pairs of one method: what its training step spends its time on."""
    model = load_component("methods", name).instantiate(image_size=size, in_channels=1)
    model.train()
    images = torch.rand(batch, 1, size, size)

    def image(fmt: torch.memory_format) -> Tensor:
        return images.contiguous(memory_format=fmt)

    if name in ("ae", "vae"):
        return {"autoencoder": (model, lambda fmt: model(image(fmt)).sum() if name == "ae"
                                else model.negative_elbo(image(fmt), sample=True)[0])}
    if name == "fanogan":
        z = torch.randn(batch, model.z_dim)
        return {"generator": (model.generator, lambda fmt: model.generator(z).sum()),
                "critic": (model.critic, lambda fmt: model.critic(image(fmt)).sum()),
                "encoder": (model.encoder, lambda fmt: model.encoder(image(fmt)).sum())}
    if name == "dcgan":
        z = torch.randn(batch, model.z_dim)
        return {"generator": (model.generator, lambda fmt: model.generator(z).sum()),
                "discriminator": (model.discriminator, lambda fmt: model.discriminator(image(fmt)).sum())}
    if name == "ascnet":
        return {"generator": (model.generator, lambda fmt: sum(t.sum() for t in model.generator(image(fmt)))),
                "discriminator": (model.discriminator, lambda fmt: model.discriminator(image(fmt)).sum())}
    if name == "anoddpm":
        steps = torch.randint(0, 1000, (batch,))
        return {"unet": (model.unet, lambda fmt: model.unet(image(fmt), steps).sum())}
    raise SystemExit(f"no workload defined for {name}")


def step_ms(module: nn.Module, loss: Workload, fmt: torch.memory_format, repeats: int) -> float:
    module.to(memory_format=fmt)
    loss(fmt).backward()  # warm-up (allocations, kernel choice)
    started = time.perf_counter()
    for _ in range(repeats):
        module.zero_grad(set_to_none=True)
        loss(fmt).backward()
    return 1000 * (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="ae,vae,fanogan,dcgan,ascnet,anoddpm")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch} x 1 x {args.size} x {args.size}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| method | network | contiguous ms/step | channels_last ms/step | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name in args.methods.split(","):
        for network, (module, loss) in workloads(name, args.size, args.batch).items():
            times: dict[str, list[float]] = {key: [] for key in formats}
            for _ in range(args.rounds):
                for key, fmt in formats.items():
                    times[key].append(step_ms(module, loss, fmt, args.repeats))
            plain, last = statistics.median(times["contiguous"]), statistics.median(times["channels_last"])
            print(f"| {name} | {network} | {plain:.0f} | {last:.0f} | {plain / last:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
