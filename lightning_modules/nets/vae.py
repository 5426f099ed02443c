"""Encoder / decoder pairs of variational autoencoders: a Gaussian posterior head (mu, log-std) and a decoder.

* :class:`ConvVAENet`: the convolutional VAE of Zimmerer et al. (MICCAI 2019, ``MIC-DKFZ/vae-anomaly-experiments``
  ``models/enc_dec.py``): per level a 4x4 stride-2 conv without bias and a LeakyReLU (no normalisation), down to a
  4x4 map, then a 4x4 valid conv to ``2 * z`` (a 1x1 code). The decoder mirrors it: a 4x4 transposed conv from the
  1x1 code to 4x4, stride-2 transposed convs, and a last transposed conv to the image channels with linear output.
* :class:`MLPVAENet`: the fully connected VAE of their (Fashion)MNIST experiment: ``D -> hidden`` ReLU ``-> (mu,
  log-std)`` and ``z -> hidden`` ReLU ``-> D`` sigmoid, with the input optionally repeated (their ``scaling``).

Both map images [B,C,H,W] to ``(mu, log_std)`` [B,z] and codes [B,z] back to images (or repeated images).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

BRAIN_CHANNELS = (16, 32, 64, 256)  # Zimmerer's 64 x 64 encoder; at 128 x 128 one more level of 256 (GenAI's VAE)
BOTTLENECK = 4  # spatial size before the 4x4 conv to the 1x1 code


def conv_vae_channels(image_size: int) -> tuple[int, ...]:
    """Default channels per level for ``image_size = 4 * 2**levels``: 16-32-64-256, padded with 256 for 128 px."""
    levels = math.log2(image_size / BOTTLENECK)
    if levels < 1 or not levels.is_integer():
        raise ValueError(f"the convolutional VAE needs image_size = 4 * 2**k (8, 16, ..., 64, 128), got {image_size}")
    levels = int(levels)
    return BRAIN_CHANNELS[:levels] if levels <= len(BRAIN_CHANNELS) else \
        BRAIN_CHANNELS + (BRAIN_CHANNELS[-1],) * (levels - len(BRAIN_CHANNELS))


class ConvVAENet(nn.Module):
    """Zimmerer et al.'s convolutional VAE; ``image_size`` must be ``4 * 2**len(channels)``."""

    def __init__(self, in_channels: int, image_size: int, z_dim: int = 256, channels: tuple[int, ...] | None = None,
                 leaky_slope: float = 0.01) -> None:
        super().__init__()
        channels = tuple(channels or conv_vae_channels(image_size))
        if image_size != BOTTLENECK * 2 ** len(channels):
            raise ValueError(f"image_size {image_size} needs {int(math.log2(image_size / BOTTLENECK))} levels of "
                             f"channels, got {len(channels)} ({list(channels)})")
        self.z_dim = z_dim
        down: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            down += [nn.Conv2d(previous, width, 4, stride=2, padding=1, bias=False), nn.LeakyReLU(leaky_slope)]
            previous = width
        down.append(nn.Conv2d(previous, 2 * z_dim, BOTTLENECK, bias=False))  # 4x4 -> 1x1: (mu, log-std)
        self.encoder = nn.Sequential(*down)
        widths = channels[::-1]
        up: list[nn.Module] = [nn.ConvTranspose2d(z_dim, widths[0], BOTTLENECK, bias=False), nn.LeakyReLU(leaky_slope)]
        for previous, width in itertools.pairwise(widths):
            up += [nn.ConvTranspose2d(previous, width, 4, stride=2, padding=1, bias=False), nn.LeakyReLU(leaky_slope)]
        up.append(nn.ConvTranspose2d(widths[-1], in_channels, 4, stride=2, padding=1, bias=False))  # linear output
        self.decoder = nn.Sequential(*up)

    def encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.encoder(image).flatten(1).chunk(2, dim=1)
        return mu, log_std

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z[:, :, None, None])


class MLPVAENet(nn.Module):
    """Zimmerer et al.'s fully connected VAE for small images; the flattened input is repeated ``repeats`` times
    (their ``scaling``, a second likelihood weight) and decoded to ``repeats`` copies [B, repeats * C, H, W]."""

    def __init__(self, in_channels: int, image_size: int, z_dim: int = 20, hidden: int = 400,
                 repeats: int = 1) -> None:
        super().__init__()
        if repeats < 1:
            raise ValueError(f"input_repeats must be >= 1, got {repeats}")
        self.shape = (repeats * in_channels, image_size, image_size)
        size = math.prod(self.shape)
        self.repeats, self.z_dim = repeats, z_dim
        self.encoder = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, size), nn.Sigmoid())

    def encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.encoder(image.repeat(1, self.repeats, 1, 1).flatten(1)).chunk(2, dim=1)
        return mu, log_std

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.shape)


def gaussian_kl(mu: Tensor, log_std: Tensor) -> Tensor:
    """KL(N(mu, exp(log_std)^2) || N(0, 1)) summed over the code, per sample [B] (analytic)."""
    return (0.5 * (mu.pow(2) + torch.exp(2 * log_std) - 1) - log_std).sum(dim=1)


def gaussian_nll(image: Tensor, mean: Tensor, log_std: float, constant: bool = True) -> Tensor:
    """Per-element -log N(image; mean, exp(log_std)^2); ``constant=False`` drops ``log_std + log(2 pi) / 2``."""
    nll = (image - mean).pow(2) / (2 * math.exp(2 * log_std))
    return nll + nll_constant(log_std) if constant else nll


def nll_constant(log_std: float) -> float:
    """The pixel-independent part of the Gaussian negative log-likelihood: ``log sigma + log(2 pi) / 2``."""
    return log_std + 0.5 * math.log(2 * math.pi)
