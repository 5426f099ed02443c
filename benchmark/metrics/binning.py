"""Log-spaced score bins read straight from the float32 bit pattern (the HDR-histogram layout).

For a non-negative float32 the bit pattern, read as an integer, grows with the value: its top bits are the
binary exponent and the next ``log2(sub_bins_per_octave)`` bits split every power of two into equal sub-bins.
Dropping the remaining mantissa bits therefore gives log-spaced bins (relative width at most
``1 / sub_bins_per_octave``; 0.1 % by default) with two integer operations per pixel and no ``log``.

Bin layout, ascending in value:

* bin 0: exactly zero (many maps are zero outside the anomaly, so zeros are counted exactly, never binned with
  tiny positives);
* bin 1: underflow, ``0 < x < 2**-min_exponent``;
* bins 2 .. n-2: the fine bins over ``[2**-40, 2**40)`` by default;
* bin n-1: overflow, ``x >= 2**max_exponent``.

Every bin's lower edge is an exact float32, so "flag ``x >= edge``" selects exactly the bins from that one up:
counts read from a histogram at a bin edge equal the counts of thresholding the map at that edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_MANTISSA_BITS = 23
_EXPONENT_BIAS = 127


@dataclass(frozen=True)
class ScoreBins:
    """The bin layout: ``sub_bins_per_octave`` (a power of two) over ``[2**-min_exponent, 2**max_exponent)``."""

    sub_bins_per_octave: int = 1024
    min_exponent: int = 40
    max_exponent: int = 40

    def __post_init__(self) -> None:
        bits = int(math.log2(self.sub_bins_per_octave)) if self.sub_bins_per_octave > 0 else -1
        if bits < 0 or 2**bits != self.sub_bins_per_octave or bits > _MANTISSA_BITS:
            raise ValueError(f"sub_bins_per_octave must be a power of two <= 2**23, got {self.sub_bins_per_octave}")
        if not (0 < self.min_exponent <= 126 and 0 < self.max_exponent <= 127):
            raise ValueError("min_exponent must be in 1..126 and max_exponent in 1..127 (float32 range)")

    @property
    def _shift(self) -> int:
        return _MANTISSA_BITS - int(math.log2(self.sub_bins_per_octave))

    @property
    def _low_bits(self) -> int:
        return (_EXPONENT_BIAS - self.min_exponent) << _MANTISSA_BITS

    @property
    def n_fine(self) -> int:
        return (self.min_exponent + self.max_exponent) * self.sub_bins_per_octave

    @property
    def n_bins(self) -> int:
        return self.n_fine + 3

    @property
    def relative_width(self) -> float:
        """Largest relative width of a fine bin (values closer than this may rank as ties)."""
        return 1.0 / self.sub_bins_per_octave

    def index(self, scores: Tensor) -> Tensor:
        """Bin index (int32, same shape) of non-negative finite ``scores`` (not checked here)."""
        bits = scores.detach().to(torch.float32).contiguous().view(torch.int32)
        index = bits - self._low_bits
        index.bitwise_right_shift_(self._shift).clamp_(-1, self.n_fine).add_(2)
        return index.masked_fill_(bits <= 0, 0)  # +0.0 and -0.0 (bits 0 and INT32_MIN) go to the zero bin

    def lower_edges(self) -> np.ndarray:
        """float32 lower edge of every bin; flagging ``x >= lower_edges()[j]`` selects exactly bins ``j..n-1``."""
        fine_bits = self._low_bits + (np.arange(self.n_fine + 1, dtype=np.int64) << self._shift)
        edges = np.empty(self.n_bins, dtype=np.float32)
        edges[0] = 0.0
        edges[1] = np.array([1], dtype=np.int32).view(np.float32)[0]  # smallest positive float32: "x > 0"
        edges[2:] = fine_bits.astype(np.int32).view(np.float32)
        return edges

    def describe(self) -> dict[str, float | int | str]:
        return {
            "layout": "float32 bit pattern (log-linear, HDR histogram)",
            "sub_bins_per_octave": self.sub_bins_per_octave,
            "fine_range": [2.0**-self.min_exponent, 2.0**self.max_exponent],
            "n_bins": self.n_bins,
            "max_relative_bin_width": self.relative_width,
            "exact_bins": "zero; underflow below the range; overflow above it",
        }
