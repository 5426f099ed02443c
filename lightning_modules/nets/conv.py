"""Strided convolutional encoder / decoder stacks (the "unified" AE layout of Baur et al., MedIA 2021)."""

from __future__ import annotations

import math

from torch import nn


def keras_batchnorm(channels: int, faithful: bool = True) -> nn.BatchNorm2d:
    """BatchNorm with TF/Keras defaults (momentum 0.99 -> PyTorch 0.01, eps 1e-3) or PyTorch defaults."""
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3) if faithful else nn.BatchNorm2d(channels)


def num_levels(image_size: int, bottleneck_resolution: int) -> int:
    """Number of stride-2 stages between ``image_size`` and ``bottleneck_resolution`` (both powers of two apart)."""
    levels = math.log2(image_size / bottleneck_resolution)
    if levels < 1 or not levels.is_integer():
        raise ValueError(f"image_size {image_size} must be bottleneck_resolution {bottleneck_resolution} times a "
                         "power of two (>= 2)")
    return int(levels)


class ConvEncoder(nn.Sequential):
    """[Conv k5 s2 'same' -> BN -> LeakyReLU] per level; channels ``min(max_channels, base * 2**i)``."""

    def __init__(self, in_channels: int, levels: int, base_channels: int = 32, max_channels: int = 128,
                 leaky_slope: float = 0.3, faithful_batchnorm: bool = True) -> None:
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(levels):
            out = min(max_channels, base_channels * 2**i)
            layers += [nn.Conv2d(channels, out, 5, stride=2, padding=2), keras_batchnorm(out, faithful_batchnorm),
                       nn.LeakyReLU(leaky_slope)]
            channels = out
        super().__init__(*layers)
        self.out_channels = channels


class ConvDecoder(nn.Sequential):
    """BN -> ReLU, then [ConvT k5 s2 -> BN -> LeakyReLU] per level with channels ``max(min_channels, top / 2**i)``,
    then a 1x1 conv to ``out_channels`` (linear output)."""

    def __init__(self, in_channels: int, out_channels: int, levels: int, top_channels: int = 128,
                 min_channels: int = 32, leaky_slope: float = 0.3, faithful_batchnorm: bool = True) -> None:
        layers: list[nn.Module] = [keras_batchnorm(in_channels, faithful_batchnorm), nn.ReLU()]
        channels = in_channels
        for i in range(levels):
            out = max(min_channels, top_channels // 2**i)
            layers += [nn.ConvTranspose2d(channels, out, 5, stride=2, padding=2, output_padding=1),
                       keras_batchnorm(out, faithful_batchnorm), nn.LeakyReLU(leaky_slope)]
            channels = out
        layers.append(nn.Conv2d(channels, out_channels, 1))
        super().__init__(*layers)
