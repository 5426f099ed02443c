"""The ResNet generator, critic and encoder of WGAN-GP's 64x64 "Good" networks, as used by f-AnoGAN.

Layout (Gulrajani et al. 2017, ``tSchlegl/f-AnoGAN`` ``wgangp_64x64.py``), with ``dim`` = 64 in the original:

* pre-activation residual block: norm -> ReLU -> conv3x3 (no bias) -> norm -> ReLU -> conv3x3 (bias), plus a
  shortcut (1x1 conv with bias) whenever the block resamples or changes width. Up blocks upsample (nearest x2, the
  original's channel repeat + depth-to-space) before their first conv and shortcut; down blocks mean-pool 2x2 after
  their second conv and before the shortcut's conv;
* generator: z -> Linear -> 8*dim x 4 x 4 -> up blocks to ``dim`` channels at full size -> BN -> ReLU -> conv3x3 ->
  tanh, with BatchNorm in the blocks;
* critic: conv3x3 -> down blocks to 8*dim x 4 x 4 -> flatten -> Linear -> 1 (no sigmoid), normalised per sample over
  (C, H, W) with a per-channel affine, i.e. ``GroupNorm(1, C)`` (layer norm in the original; no BatchNorm, which
  would break the per-sample gradient penalty);
* encoder (izi_f): the critic's topology with BatchNorm, ending in Linear -> z and tanh.

At 64 px there are four resampling blocks (widths x8 x8 x4 x2 x1 in the generator); the 128 px variant adds one more
8*dim block at the 4 x 4 end, so the critic's feature vector (the flattened output of its last block, used by the
izi_f loss) is 8*dim*16 = 8192 values at ``dim`` = 64 for both sizes.

Initialisation follows the original's uniform scheme (all its convs have stride 1): block convs and the output conv
"He" (std sqrt(4 / (fan_in + fan_out)), fans counting the kernel area), the stem, shortcuts and linears Glorot
(std sqrt(2 / (fan_in + fan_out))), biases zero.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Norm = Callable[[int], nn.Module]
Resample = Literal["up", "down"]
BOTTOM_SIZE = 4  # spatial size of the generator's input / the critic's last block


def critic_norm(channels: int) -> nn.Module:
    """Per-sample normalisation over (C, H, W) with a per-channel affine (the original's critic layer norm)."""
    return nn.GroupNorm(1, channels)


def batch_norm(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


def resnet_levels(image_size: int) -> int:
    """Number of resampling blocks between ``image_size`` and 4 x 4 (4 at 64 px, 5 at 128 px)."""
    levels = math.log2(image_size / BOTTOM_SIZE)
    if not levels.is_integer() or levels < 1:
        raise ValueError(f"the WGAN-GP ResNets need a power-of-two image size >= 8, got {image_size}")
    return int(levels)


def widths(levels: int) -> list[int]:
    """Channel multipliers from full size down to 4 x 4: [1, 2, 4, 8, 8] at 64 px, [1, 2, 4, 8, 8, 8] at 128 px."""
    return [min(8, 2**i) for i in range(levels + 1)]


def _uniform_init(module: nn.Conv2d | nn.Linear, gain: float) -> None:
    """Uniform weights with std sqrt(gain / (fan_in + fan_out)) and zero bias (the original's initialisers)."""
    if isinstance(module, nn.Conv2d):
        area = module.kernel_size[0] * module.kernel_size[1]
        fan_in, fan_out = module.in_channels * area, module.out_channels * area
    else:
        fan_in, fan_out = module.in_features, module.out_features
    bound = math.sqrt(3.0) * math.sqrt(gain / (fan_in + fan_out))
    nn.init.uniform_(module.weight, -bound, bound)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def conv3x3(in_channels: int, out_channels: int, bias: bool = True, he: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    _uniform_init(conv, 4.0 if he else 2.0)
    return conv


def linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    _uniform_init(layer, 2.0)
    return layer


class ResidualBlock(nn.Module):
    """Pre-activation residual block that upsamples or downsamples by 2."""

    def __init__(self, in_channels: int, out_channels: int, resample: Resample, norm: Norm) -> None:
        super().__init__()
        if resample not in ("up", "down"):
            raise ValueError(f"resample must be 'up' or 'down', got {resample!r}")
        self.resample = resample
        middle = out_channels if resample == "up" else in_channels
        self.norm1, self.norm2 = norm(in_channels), norm(middle)
        self.conv1 = conv3x3(in_channels, middle, bias=False, he=True)
        self.conv2 = conv3x3(middle, out_channels, he=True)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        _uniform_init(self.shortcut, 2.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            shortcut = self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            out = self.conv1(F.interpolate(F.relu(self.norm1(x)), scale_factor=2.0, mode="nearest"))
            out = self.conv2(F.relu(self.norm2(out)))
        else:
            shortcut = self.shortcut(F.avg_pool2d(x, 2))
            out = self.conv1(F.relu(self.norm1(x)))
            out = F.avg_pool2d(self.conv2(F.relu(self.norm2(out))), 2)
        return shortcut + out


class ResNetGenerator(nn.Module):
    """z [B, z_dim] -> image [B, C, H, W] in (-1, 1)."""

    def __init__(self, image_size: int = 64, out_channels: int = 1, z_dim: int = 128, dim: int = 64) -> None:
        super().__init__()
        multipliers = widths(resnet_levels(image_size))[::-1]  # 4 x 4 first
        self.bottom = (dim * multipliers[0], BOTTOM_SIZE, BOTTOM_SIZE)
        self.project = linear(z_dim, math.prod(self.bottom))
        self.blocks = nn.Sequential(*(ResidualBlock(dim * a, dim * b, "up", batch_norm)
                                      for a, b in itertools.pairwise(multipliers)))
        self.head = nn.Sequential(nn.BatchNorm2d(dim), nn.ReLU(), conv3x3(dim, out_channels, he=True), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.blocks(self.project(z).view(-1, *self.bottom)))


class ResNetCritic(nn.Module):
    """image -> [B, out_features]: conv3x3, down blocks, flatten (:meth:`features`), Linear.

    The critic (``norm`` = :func:`critic_norm`, one output) and the izi_f encoder (``norm`` = :func:`batch_norm`,
    ``out_features`` = z_dim, ``tanh_output``) share this topology."""

    def __init__(self, image_size: int = 64, in_channels: int = 1, dim: int = 64, out_features: int = 1,
                 norm: Norm = critic_norm, tanh_output: bool = False) -> None:
        super().__init__()
        multipliers = widths(resnet_levels(image_size))
        self.stem = conv3x3(in_channels, dim)
        self.blocks = nn.Sequential(*(ResidualBlock(dim * a, dim * b, "down", norm)
                                      for a, b in itertools.pairwise(multipliers)))
        self.feature_dim = dim * multipliers[-1] * BOTTOM_SIZE * BOTTOM_SIZE
        self.output = linear(self.feature_dim, out_features)
        self.tanh_output = tanh_output

    def features(self, image: Tensor) -> Tensor:
        """The flattened output of the last residual block [B, feature_dim] (f-AnoGAN's feature space)."""
        return self.blocks(self.stem(image)).flatten(1)

    def forward(self, image: Tensor) -> Tensor:
        out = self.output(self.features(image))
        return torch.tanh(out) if self.tanh_output else out
