"""Exact ranking metrics (AUROC, average precision) as a torchmetrics ``Metric``.

This first engine keeps the scores it is given (``cat`` states, synced across DDP ranks by torchmetrics) and
computes the metrics exactly with ``torchmetrics.functional``. Its interface (``update(scores, targets)`` ->
``compute()`` dict) is what the constant-memory histogram engine replaces.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat


class BinaryRanking(Metric):
    """AUROC and average precision of scores against binary targets, with NaN and a reason when undefined."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        self.scores.append(scores.detach().flatten().float())
        self.targets.append(targets.detach().flatten().to(torch.uint8))

    def compute(self) -> dict[str, float | int | str | None]:
        scores = dim_zero_cat(self.scores) if self.scores else torch.zeros(0)
        targets = dim_zero_cat(self.targets) if self.targets else torch.zeros(0, dtype=torch.uint8)
        n_pos = int(targets.sum())
        n_neg = int(targets.numel() - n_pos)
        result: dict[str, float | int | str | None] = {"n_positive": n_pos, "n_negative": n_neg, "reason": None}
        if n_pos == 0 or n_neg == 0:
            missing = "positive" if n_pos == 0 else "negative"
            result.update(auroc=math.nan, auprc=math.nan, reason=f"no {missing} samples: metric undefined")
            return result
        target_long = targets.long()
        result["auroc"] = float(binary_auroc(scores, target_long))
        result["auprc"] = float(binary_average_precision(scores, target_long))
        return result
