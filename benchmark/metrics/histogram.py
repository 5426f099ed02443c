"""Constant-memory pixel-score histograms as a torchmetrics ``Metric`` (sum-reduced across DDP ranks)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from benchmark.metrics.binning import ScoreBins
from benchmark.metrics.curves import BinnedCurves


class PixelHistogram(Metric):
    """Counts of positive and negative pixel scores per score bin, for ``n_groups`` independent groups.

    State: ``counts`` int64 ``[n_groups, 2, n_bins]`` (index 1 = positive), summed over batches and ranks, so
    memory is fixed (about 1.3 MB per group with the default bins) whatever the number of pixels, and the result
    is identical on one or many devices. ``compute`` returns one :class:`BinnedCurves` per group.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, n_groups: int = 1, bins: ScoreBins | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bins = bins or ScoreBins()
        self.n_groups = n_groups
        self.add_state("counts", default=torch.zeros(n_groups, 2, self.bins.n_bins, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, scores: Tensor, targets: Tensor, groups: Tensor | None = None,
               rows: Tensor | None = None) -> None:
        """Add pixels: ``scores`` >= 0 and finite (binned as float32), ``targets`` non-zero for positives,
        ``groups`` in [0, n_groups) per pixel; pixels of a negative group are skipped (e.g. outside the roi).
        With ``rows`` (int64 ``[G]``), ``groups`` are in [0, G) and group ``g`` adds to state group ``rows[g]``:
        a batch that touches few of many groups (subjects) then bins into ``G`` groups only.

        Skipped pixels are counted in a scratch group that is dropped, which is faster than selecting pixels with
        a boolean index.
        """
        scores, targets = scores.detach().flatten(), targets.detach().flatten()
        if scores.numel() == 0:
            return
        low, high = torch.aminmax(scores)
        if not (float(low) >= 0 and math.isfinite(float(high))):  # one pass; NaN fails the first test
            raise ValueError(f"PixelHistogram: scores must be finite and >= 0 (min {float(low)}, max {float(high)})")
        flat = self.bins.index(scores)
        flat += (targets != 0).to(torch.int32) * self.bins.n_bins
        kept = self.n_groups if rows is None else len(rows)
        slots = kept
        if groups is not None:
            groups = groups.detach().flatten().to(torch.int32)
            if int(groups.max()) >= kept:
                limit = f"n_groups ({kept})" if rows is None else f"len(rows) ({kept})"
                raise ValueError(f"PixelHistogram: group id {int(groups.max())} >= {limit}")
            flat += torch.where(groups < 0, kept, groups) * (2 * self.bins.n_bins)
            slots += 1
        counts = torch.bincount(flat, minlength=slots * 2 * self.bins.n_bins)[: kept * 2 * self.bins.n_bins]
        counts = counts.view(kept, 2, self.bins.n_bins).to(self.counts.device)
        if rows is None:
            self.counts += counts
        else:
            self.counts.index_add_(0, rows.to(self.counts.device), counts)

    def compute(self) -> list[BinnedCurves]:
        counts = self.counts.cpu().numpy()
        edges = self.bins.lower_edges()
        return [BinnedCurves(group[1], group[0], edges) for group in counts]
