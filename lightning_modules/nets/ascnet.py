"""ASC-Net's networks (Dey & Hong, MICCAI 2021; ``raun1/ASC-NET`` ``src/create_networks.py`` and stage scripts).

* every convolution is 3x3 'same' followed by ReLU then BatchNorm (**Conv -> ReLU -> BN**, Keras defaults:
  momentum 0.99 = PyTorch 0.01, eps 1e-3), Glorot-uniform weights and zero biases (Keras' initialisers);
* generator: a shared U-Net-like encoder (two convs per level, 32-64-128-256, then max-pool 2 and dropout 0.3; a
  512 bottleneck) and two decoders with separate weights fed the same bottleneck and skips. A decoder level:
  ConvTranspose 2x2 stride 2 (linear) -> concat skip -> dropout 0.3 -> two convs; a 1x1 conv and a sigmoid end it.
  The I_fc decoder (the reference-manifold cut) has no dropout after its last (full-size) concat, the I_wc
  decoder (the complement) has. I_ro = sigmoid(1x1 conv over [I_fc, I_wc]): a learnt a I_fc + b I_wc + c;
* discriminator: five blocks of two convs (32-64-128-256-512), blocks 1-4 followed by max-pool 2 and dropout 0.3,
  flatten, linear, tanh (512 in the last block as in the stage scripts and the paper's figure; the unused
  ``create_networks.py`` says 256).

Images need a side divisible by 16 (64, 128, 160). ``width`` scales every level (faithful 32; the CPU profile
uses less, see ``configs/methods/ascnet.yaml``).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lightning_modules.nets.conv import keras_batchnorm

DROPOUT = 0.3
FAITHFUL_WIDTH = 32  # channels of the first level; the others double it (x2, x4, x8, x16)


def level_widths(width: int = FAITHFUL_WIDTH) -> tuple[int, ...]:
    """Channels of the five levels: 32-64-128-256-512 at the faithful ``width`` 32."""
    return tuple(width * 2**i for i in range(5))


def glorot(module: nn.Module) -> None:
    """Keras' default initialisers: Glorot-uniform weights, zero biases (``net.apply(glorot)``)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def check_size(image_size: int) -> None:
    if image_size % 16 or image_size < 16:
        raise ValueError(f"ASC-Net needs an image size divisible by 16 (four 2x poolings), got {image_size}")


class ConvReluBN(nn.Sequential):
    """Two [conv3x3 'same' -> ReLU -> BN] layers (ASC-Net's order)."""

    def __init__(self, in_channels: int, out_channels: int, faithful_batchnorm: bool = True) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(),
                       keras_batchnorm(out_channels, faithful_batchnorm)]
        super().__init__(*layers)


class Encoder(nn.Module):
    """The shared encoder: the bottleneck features and the skips (full size first)."""

    def __init__(self, in_channels: int, width: int = FAITHFUL_WIDTH, faithful_batchnorm: bool = True) -> None:
        super().__init__()
        widths = (in_channels, *level_widths(width))
        self.levels = nn.ModuleList(ConvReluBN(a, b, faithful_batchnorm) for a, b in itertools.pairwise(widths[:-1]))
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Dropout(DROPOUT))
        self.bottleneck = ConvReluBN(widths[-2], widths[-1], faithful_batchnorm)

    def forward(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips, x = [], image
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = self.down(x)
        return self.bottleneck(x), skips


class Decoder(nn.Module):
    """One decoder head: up levels 256-128-64-32 with the encoder's skips, then a 1x1 conv and a sigmoid."""

    def __init__(self, last_dropout: bool, width: int = FAITHFUL_WIDTH, faithful_batchnorm: bool = True) -> None:
        super().__init__()
        widths = level_widths(width)[::-1]  # 512-256-128-64-32
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in itertools.pairwise(widths))
        self.convs = nn.ModuleList(ConvReluBN(2 * b, b, faithful_batchnorm) for b in widths[1:])
        self.dropouts = nn.ModuleList(nn.Dropout(DROPOUT) if last_dropout or i < len(widths) - 2 else nn.Identity()
                                      for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, bottleneck: Tensor, skips: list[Tensor]) -> Tensor:
        x = bottleneck
        for up, conv, dropout, skip in zip(self.ups, self.convs, self.dropouts, skips[::-1], strict=True):
            x = conv(dropout(torch.cat([up(x), skip], dim=1)))
        return torch.sigmoid(self.head(x))


class Cuts(NamedTuple):
    """The generator's three outputs [B,1,H,W] in (0, 1)."""

    fc: Tensor  # I_fc: the part on the reference manifold (sent to the discriminator)
    wc: Tensor  # I_wc: the complement (the anomaly cut)
    ro: Tensor  # I_ro: the recombination, trained to reproduce the input


class AscNetGenerator(nn.Module):
    """Shared encoder, the I_fc and I_wc decoders and the learnt recombination."""

    def __init__(self, image_size: int = 160, in_channels: int = 1, width: int = FAITHFUL_WIDTH,
                 faithful_batchnorm: bool = True) -> None:
        super().__init__()
        check_size(image_size)
        self.encoder = Encoder(in_channels, width, faithful_batchnorm)
        self.decoder_fc = Decoder(last_dropout=False, width=width, faithful_batchnorm=faithful_batchnorm)
        self.decoder_wc = Decoder(last_dropout=True, width=width, faithful_batchnorm=faithful_batchnorm)
        self.recombine = nn.Conv2d(2, 1, 1)
        self.apply(glorot)

    def forward(self, image: Tensor) -> Cuts:
        bottleneck, skips = self.encoder(image)
        fc, wc = self.decoder_fc(bottleneck, skips), self.decoder_wc(bottleneck, skips)
        return Cuts(fc, wc, torch.sigmoid(self.recombine(torch.cat([fc, wc], dim=1))))


class AscNetDiscriminator(nn.Module):
    """image [B,1,H,W] -> tanh score [B] (reference images -> -1, I_fc -> +1 when trained)."""

    def __init__(self, image_size: int = 160, in_channels: int = 1, width: int = FAITHFUL_WIDTH,
                 faithful_batchnorm: bool = True) -> None:
        super().__init__()
        check_size(image_size)
        widths = (in_channels, *level_widths(width))
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(ConvReluBN(a, b, faithful_batchnorm))
            if i < len(widths) - 2:
                layers += [nn.MaxPool2d(2), nn.Dropout(DROPOUT)]
        self.body = nn.Sequential(*layers)
        self.output = nn.Linear(widths[-1] * (image_size // 16) ** 2, 1)
        self.apply(glorot)

    def forward(self, image: Tensor) -> Tensor:
        return torch.tanh(self.output(self.body(image).flatten(1))).flatten()


def three_by_three_kernels(module: nn.Module) -> list[Tensor]:
    """The 3x3 convolution kernels of a network: the only weights ASC-Net's L2 penalty (2e-4) applies to."""
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
