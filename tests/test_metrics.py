"""Sample-level ranking metrics against scikit-learn; output contract checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from benchmark.metrics import BinaryRanking, MethodOutputError, check_output
from lightning_modules.base import AnomalyOutput


@pytest.mark.parametrize("seed", range(5))
def test_ranking_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    n = 5000
    targets = rng.random(n) < 0.1
    scores = rng.normal(size=n) + 1.5 * targets
    scores = np.round(scores, 1)  # many ties
    metric = BinaryRanking()
    for chunk in np.array_split(np.arange(n), 7):  # several updates, as in batches
        metric.update(torch.from_numpy(scores[chunk]).float(), torch.from_numpy(targets[chunk]))
    result = metric.compute()
    assert result["auroc"] == pytest.approx(roc_auc_score(targets, scores.astype(np.float32)), abs=1e-6)
    assert result["auprc"] == pytest.approx(average_precision_score(targets, scores.astype(np.float32)), abs=1e-6)
    assert result["n_positive"] == targets.sum() and result["n_negative"] == n - targets.sum()


def test_undefined_metrics_are_nan_with_a_reason():
    metric = BinaryRanking()
    metric.update(torch.rand(100), torch.zeros(100))
    result = metric.compute()
    assert math.isnan(result["auroc"]) and math.isnan(result["auprc"])
    assert "no positive" in result["reason"]


def _batch(rng, b=6, h=16, w=16):
    image = torch.from_numpy(rng.random((b, 1, h, w))).float()
    mask = torch.zeros(b, 1, h, w)
    mask[:3, :, 4:9, 5:10] = 1
    roi = torch.zeros(b, 1, h, w)
    roi[:, :, 2:14, 2:14] = 1
    label = (mask.flatten(1).sum(1) >= 10).long()
    return {"image": image, "mask": mask, "roi": roi, "label": label, "subject": [f"s{i}" for i in range(b)],
            "slice": torch.arange(b)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: setattr(o, "anomaly_map", o.anomaly_map * float("nan")), "NaN/Inf"),
        (lambda o: setattr(o, "anomaly_score", o.anomaly_score + float("inf")), "NaN/Inf"),
        (lambda o: setattr(o, "anomaly_map", o.anomaly_map - 2), "negative"),
        (lambda o: setattr(o, "anomaly_map", o.anomaly_map[:, :, :8]), "shape"),
        (lambda o: setattr(o, "anomaly_score", o.anomaly_score[:2]), "shape"),
    ],
)
def test_bad_method_outputs_are_rejected_naming_the_method(change, message):
    batch = _batch(np.random.default_rng(0))
    output = AnomalyOutput(torch.rand(6, 1, 16, 16), torch.rand(6))
    change(output)
    with pytest.raises(MethodOutputError, match=f"method my_method: .*{message}"):
        check_output(output, batch, "my_method")
