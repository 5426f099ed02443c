"""Gaussian smoothing of anomaly maps (depthwise 2-D convolution with zero padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """[size, size] isotropic Gaussian centred at ``(size - 1) / 2``, normalised to sum to 1 (``size`` odd)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the smoothing kernel size must be odd and positive, got {size}")
    if sigma <= 0:
        raise ValueError(f"the smoothing sigma must be positive, got {sigma}")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = torch.outer(profile, profile)
    return (kernel / kernel.sum()).to(dtype)


def smooth(maps: Tensor, kernel: Tensor) -> Tensor:
    """Each channel of ``maps`` [B,C,H,W] convolved with ``kernel`` [k,k] (zero padding, same size out)."""
    channels, size = maps.shape[1], kernel.shape[-1]
    weight = kernel.to(maps)[None, None].expand(channels, 1, size, size)
    return F.conv2d(maps, weight, padding=size // 2, groups=channels)
