"""DCGAN generator and discriminator (Radford, Metz & Chintala, ICLR 2016) for square single- or multi-channel images.

The recipe: strided convolutions only (transposed in G), BatchNorm everywhere except G's output and D's input
layer, ReLU in G with a tanh output, LeakyReLU 0.2 in D, weights ~ N(0, 0.02) (BatchNorm scale ~ N(1, 0.02), shift
0). Layout (the PyTorch reference DCGAN at 64 px; the 128 px layout of the harness's reference notes adds one level):

* G: z as 1 x 1 -> ConvT 4 s1 -> ``features * 2**(L-1)`` x 4 x 4 -> ConvT 4 s2 p1 halving the width per level ->
  ConvT 4 s2 p1 -> C x H x W -> tanh (64 px: 512-256-128-64, 128 px: 1024-512-256-128-64 at ``features`` = 64);
* D: Conv 4 s2 p1 C -> ``features`` (no BN) -> Conv 4 s2 p1 doubling the width, each BN + LeakyReLU 0.2, down to
  ``features * 2**(L-1)`` x 4 x 4 (:meth:`DCGANDiscriminator.features`, AnoGAN's feature-matching layer) ->
  Conv 4 valid -> 1 logit.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

BOTTOM_SIZE = 4


def dcgan_levels(image_size: int) -> int:
    """Stride-2 levels between 4 x 4 and ``image_size`` (4 at 64 px, 5 at 128 px)."""
    levels = math.log2(image_size / BOTTOM_SIZE)
    if not levels.is_integer() or levels < 2:
        raise ValueError(f"DCGAN needs a power-of-two image size >= 16, got {image_size}")
    return int(levels)


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialisation, applied with ``net.apply(dcgan_init)``."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """z [B, z_dim] -> image [B, C, H, W] in (-1, 1)."""

    def __init__(self, image_size: int = 64, out_channels: int = 1, z_dim: int = 100, features: int = 64) -> None:
        super().__init__()
        levels = dcgan_levels(image_size)
        width = features * 2 ** (levels - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, width, BOTTOM_SIZE, 1, 0, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(levels - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2),
                       nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image -> one logit per image [B]; :meth:`features` gives the last 4 x 4 feature map (flattened)."""

    def __init__(self, image_size: int = 64, in_channels: int = 1, features: int = 64) -> None:
        super().__init__()
        levels = dcgan_levels(image_size)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = features
        for _ in range(levels - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        self.body = nn.Sequential(*layers)
        self.feature_dim = width * BOTTOM_SIZE * BOTTOM_SIZE
        self.logit = nn.Conv2d(width, 1, BOTTOM_SIZE, 1, 0, bias=False)
        self.apply(dcgan_init)

    def features(self, image: Tensor) -> Tensor:
        return self.body(image).flatten(1)

    def forward(self, image: Tensor) -> Tensor:
        return self.logit(self.body(image)).flatten()
