"""Exact ranking metrics (AUROC, average precision) of sample scores as a torchmetrics ``Metric``.

Used for sample-level metrics (one score per slice, so memory grows with slices, not pixels): it keeps the scores
(``cat`` states, gathered across DDP ranks by torchmetrics) and computes the metrics exactly with
``torchmetrics.functional``. Pixel metrics use the constant-memory :class:`~benchmark.metrics.PixelHistogram`.
"""

from __future__ import annotations

import math
from typing import Any

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
        # float like torchmetrics' placeholder for an empty rank, so all-gather sees one dtype on every rank
        self.targets.append(targets.detach().flatten().float())

    def compute(self) -> dict[str, Any]:
        scores = _cat(self.scores).float()
        targets = _cat(self.targets).to(torch.uint8)
        n_pos = int(targets.sum())
        n_neg = int(targets.numel() - n_pos)
        result: dict[str, Any] = {"n_positive": n_pos, "n_negative": n_neg, "reason": None,
                                  "distributions": {"normal": _summary(scores[targets == 0]),
                                                    "anomalous": _summary(scores[targets == 1])},
                                  # sorted: the gather order differs between 1 and N devices
                                  "scores": {"normal": scores[targets == 0].sort().values.tolist(),
                                             "anomalous": scores[targets == 1].sort().values.tolist()}}
        result.update(ranking_metrics(scores[targets == 0], scores[targets == 1]))
        return result


def ranking_metrics(negatives: Tensor, positives: Tensor) -> dict[str, Any]:
    """``{auroc, auprc, reason}`` of positive against negative scores (NaN and a reason when one side is empty)."""
    if positives.numel() == 0 or negatives.numel() == 0:
        missing = "positive" if positives.numel() == 0 else "negative"
        return {"auroc": math.nan, "auprc": math.nan, "reason": f"no {missing} samples: metric undefined"}
    scores = torch.cat([negatives.flatten(), positives.flatten()]).float()
    targets = torch.cat([torch.zeros(negatives.numel()), torch.ones(positives.numel())]).long()
    # torchmetrics reads scores outside [0, 1] as logits and squashes them with a float32 sigmoid, which ties
    # large scores; ranks scaled into [0, 1] keep the order and the ties exactly
    distinct, rank = torch.unique(scores, return_inverse=True)
    ranked = rank.double() / max(len(distinct) - 1, 1)
    return {"auroc": float(binary_auroc(ranked, targets)), "auprc": float(binary_average_precision(ranked, targets)),
            "reason": None}


def _cat(state: Tensor | list[Tensor]) -> Tensor:
    """A ``cat`` state as one tensor: a list before sync (maybe empty on a rank without data), a tensor after."""
    if isinstance(state, Tensor):
        return state.flatten()
    return dim_zero_cat(state).flatten() if state else torch.zeros(0)


QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _summary(scores: Tensor) -> dict[str, Any]:
    """Size, mean, std and quantiles of a score distribution (empty: only ``n``)."""
    if scores.numel() == 0:
        return {"n": 0}
    values = scores.double()
    quantiles = torch.quantile(values, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    return {"n": values.numel(), "mean": float(values.mean()), "std": float(values.std(unbiased=False)),
            **{f"q{round(100 * q):02d}": v for q, v in zip(QUANTILES, quantiles, strict=True)}}
