"""Normative-learning metrics and lesion-level detection at test time (:class:`NormativeCallback`).

Bercea et al. (Nature Communications 2025) ask three things of a method that restores images (returns a
``reconstruction``); their code logs only the ingredients, the indices follow the documented readings
(``benchmark/metrics/normative.py``, reading ``bercea_v1``, [UNVERIFIED] combinations labelled there):

* **RQI** on the ``healthy`` test set: MAE, SSIM, LPIPS(x, x_hat) and LPIPS(x, 0) per image; the index
  1 - LPIPS(x, x_hat) / LPIPS(x, 0), or 1 - MAE(x, x_hat) / MAE(x, 0) when no LPIPS weights are available (the row
  says which reading: ``rqi_reading``).
* **AHI** per lesion test set: Frechet distances to the healthy *training* images' features of the unseen healthy
  images (the ``healthy`` test set), the pathological inputs (the set's slices with lesion pixels) and their
  restorations; the clipped fraction of the healthy gap that restoration closes. The feature extractor (Inception
  from a local TorchScript file, else an encoder trained once on the dataset's healthy training images and cached)
  is recorded in ``metrics.json``.
* **CACI** per lesion test set: squared error, SSIM and LPIPS between input and restoration inside the lesions
  (correction) and in the healthy tissue of the same slices (roi minus lesion: conservation), pooled over the set;
  the index MSE_lesion / (MSE_lesion + MSE_healthy).
* **Composite** per lesion test set: the mean of AHI and the harmonic mean of RQI and CACI.

Lesion-level detection (the FastMRI+ rule: a lesion is detected when more than ``detection_min_fraction`` of its
pixels are flagged) is computed for every score variant at every healthy-calibrated threshold.

Results go into each test set's entry of the evaluation results (``normative`` and ``detection``, hence into
``metrics.json``, the leaderboard and TensorBoard), with ``notes`` saying why a value is null (e.g. a method
without reconstruction); the run-level summary (readings, extractor, LPIPS status, Frechet distances) is
:attr:`NormativeCallback.result` (``metrics.json``'s ``normative``). Under DDP each rank accumulates its shard and
the per-image terms are gathered before the indices are computed. Undefined values are NaN in memory and null in
``metrics.json`` (``benchmark.io.write_json``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor

from benchmark.callbacks import EvaluationCallback, flatten_scalars, stage_prefix
from benchmark.metrics.features import healthy_encoder_features, load_inception
from benchmark.metrics.lesions import batch_components, detect_lesions, summarise_detection
from benchmark.metrics.normative import (
    ahi_index,
    caci_index,
    composite_index,
    conservation_terms,
    frechet_distance,
    pool_conservation,
    restoration_terms,
    rqi_index,
)
from benchmark.metrics.perceptual import load_lpips
from datamodules.base import HEALTHY_TEST_SET, AnomalyDataModule

MAX_REFERENCE_IMAGES = 2048  # healthy training images whose features are the reference set N (evenly spaced)
FEATURE_BATCH = 64
NO_RECONSTRUCTION = "the method returns no reconstruction (restoration metrics need one)"


def _gather(value: Any) -> list[Any]:
    """``value`` of every rank (a one-element list outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _concat(parts: list[dict[str, list[np.ndarray]]]) -> dict[str, np.ndarray]:
    keys = {key for part in parts for key in part}
    return {key: np.concatenate([a for part in parts for a in part.get(key, [])] or [np.zeros(0)]) for key in keys}


def _mean_or_nan(values: np.ndarray | None) -> float:
    return float(np.mean(values)) if values is not None and len(values) else math.nan


class NormativeCallback(pl.Callback):
    """RQI / AHI / CACI / composite and lesion-level detection during ``trainer.test`` (module docstring).

    ``evaluation``: the run's :class:`EvaluationCallback` (its calibrated thresholds, and the results the metrics
    are added to; it must come before this callback in the trainer's list). ``cache_dir`` / ``dataset_key``: where
    the offline feature encoder of the dataset is cached and under which key."""

    def __init__(self, evaluation: EvaluationCallback, cache_dir: Path, dataset_key: str,
                 feature_extractor: str = "auto", detection_min_fraction: float = 0.1) -> None:
        if feature_extractor not in ("auto", "inception", "healthy_encoder"):
            raise ValueError(f"unknown feature_extractor {feature_extractor!r}; use auto, inception or "
                             "healthy_encoder")
        self.evaluation = evaluation
        self.cache_dir = Path(cache_dir)
        self.dataset_key = dataset_key
        self.feature_extractor = feature_extractor
        self.detection_min_fraction = detection_min_fraction
        self.result: dict[str, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self._terms: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        self._features: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
        self._lesions: dict[tuple[str | None, str, str], dict[str, list[np.ndarray]]] = defaultdict(
            lambda: defaultdict(list))
        self._has_reconstruction = True
        self._rqi_reading: str | None = None
        self._fd: dict[str, Any] = {}

    # ---- set-up -------------------------------------------------------------------------------------------------
    def _load_tools(self, trainer: pl.Trainer, device: torch.device) -> None:
        """LPIPS networks (when their weights are present) and the feature extractor with the reference set N."""
        self._lpips, self._lpips_notes = {}, {}
        for backbone in ("alex", "squeeze"):  # GenAI: AlexNet for RQI, SqueezeNet (spatial) for CACI
            network, reason = load_lpips(backbone)
            if network is None:
                self._lpips_notes[backbone] = reason
            else:
                self._lpips[backbone] = network.to(device)
        splits = trainer.datamodule._splits
        train = splits.train.images
        index = np.linspace(0, len(train) - 1, min(len(train), MAX_REFERENCE_IMAGES)).round().astype(int)
        reference = torch.from_numpy(np.asarray(train[np.unique(index)], dtype=np.float32))
        extractor, reason = (None, "feature_extractor: healthy_encoder") if self.feature_extractor == \
            "healthy_encoder" else load_inception(device=device)
        if extractor is None and self.feature_extractor == "inception":
            raise RuntimeError(f"feature_extractor: inception, but {reason}")
        if extractor is None:  # trained on first use: autograd inside Lightning's inference-mode test loop
            with torch.inference_mode(False), torch.enable_grad():
                extractor = healthy_encoder_features(reference.clone(), self.cache_dir, self.dataset_key)
        self._extractor_note = reason
        self._extractor = extractor
        self._reference = self._features_of(reference, device)

    def _features_of(self, images: Tensor, device: torch.device) -> np.ndarray:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            chunks = [self._extractor(images[i:i + FEATURE_BATCH].to(device).float()).float().cpu().numpy()
                      for i in range(0, len(images), FEATURE_BATCH)]
        return np.concatenate(chunks).astype(np.float64)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(trainer.datamodule, AnomalyDataModule):
            raise TypeError("normative metrics need an AnomalyDataModule (healthy training images, masks, rois)")
        self._reset()
        self.result = None
        self._load_tools(trainer, pl_module.device)

    # ---- accumulation -------------------------------------------------------------------------------------------
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        test_set = trainer.datamodule.test_set_names[dataloader_idx]
        image, mask, roi = batch["image"].float(), (batch["mask"] > 0.5).float(), (batch["roi"] > 0.5).float()
        thresholds = self._thresholds()
        components = batch_components(mask) if thresholds else None  # the lesions, labelled once per batch
        for variant, output in outputs.by_variant().items():
            for name, threshold in thresholds.get(variant, {}).items():
                found = detect_lesions(output.anomaly_map.float(), mask, roi, threshold, self.detection_min_fraction,
                                       components)
                for key, values in found.items():
                    self._lesions[variant, test_set, name][key].append(np.asarray(values))
        reconstruction = outputs.reconstruction
        if reconstruction is None:
            self._has_reconstruction = False
            return
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
            self._accumulate(test_set, image, reconstruction.float().to(image.device), mask, roi)

    def _accumulate(self, test_set: str, image: Tensor, reconstruction: Tensor, mask: Tensor, roi: Tensor) -> None:
        terms = self._terms[test_set]
        if test_set == HEALTHY_TEST_SET:
            for key, value in restoration_terms(image, reconstruction).items():
                terms[key].append(value.cpu().numpy())
            if "alex" in self._lpips:
                alex = self._lpips["alex"]
                terms["lpips_rec"].append(alex(image, reconstruction, normalize=True).double().cpu().numpy())
                terms["lpips_blank"].append(alex(image, torch.zeros_like(image), normalize=True).double().cpu().numpy())
            self._features[test_set, "inputs"].append(self._features_of(image, image.device))
            return
        lesion_slices = mask.flatten(1).sum(1) > 0
        if not lesion_slices.any():
            return
        image, reconstruction = image[lesion_slices], reconstruction[lesion_slices]
        lesion, healthy = mask[lesion_slices], roi[lesion_slices] * (1 - mask[lesion_slices])
        lpips_map = None
        if "squeeze" in self._lpips:
            lpips_map = self._lpips["squeeze"](image, reconstruction, normalize=True, spatial=True)
        for key, value in conservation_terms(image, reconstruction, lesion, healthy, lpips_map).items():
            terms[key].append(value.cpu().numpy())
        self._features[test_set, "inputs"].append(self._features_of(image, image.device))
        self._features[test_set, "restorations"].append(self._features_of(reconstruction, image.device))

    def _thresholds(self) -> dict[str | None, dict[str, float]]:
        return {variant: {name: entry["threshold"] for name, entry in calibration["thresholds"].items()}
                for variant, calibration in self.evaluation.calibration.items() if calibration}

    # ---- results ------------------------------------------------------------------------------------------------
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # one collective per kind of state: every rank's shard, merged
        term_parts = _gather({name: dict(values) for name, values in self._terms.items()})
        terms = {name: _concat([part.get(name, {}) for part in term_parts])
                 for name in trainer.datamodule.test_set_names}
        features = {key: np.concatenate(parts) for key, parts in _concat_features(
            _gather({key: list(values) for key, values in self._features.items()})).items()}
        lesion_parts = _gather({key: dict(values) for key, values in self._lesions.items()})
        lesions = {key: _concat([part.get(key, {}) for part in lesion_parts])
                   for key in {key for part in lesion_parts for key in part}}
        has_reconstruction = all(_gather(self._has_reconstruction))
        notes: dict[str, str] = {}
        per_set = self._restoration_results(trainer.datamodule.test_set_names, terms, features, notes) \
            if has_reconstruction else {}
        for variant, results in self.evaluation.results.items():
            for name, result in results.items():
                result_notes = result.setdefault("notes", {})
                if has_reconstruction:
                    result["normative"] = dict(per_set.get(name, {}))
                    result_notes.update({k: v for k, v in notes.items() if k.startswith(f"{name}.")})
                else:
                    result["normative"] = dict.fromkeys(("rqi", "ahi", "caci", "composite"), math.nan)
                    result_notes["normative"] = NO_RECONSTRUCTION
                if name != HEALTHY_TEST_SET:
                    result["detection"] = {}
                    for threshold in self._thresholds().get(variant, {}):
                        summary = _detection(lesions.get((variant, name, threshold), {}))
                        if summary.pop("note", None):
                            result_notes[f"detection.{threshold}"] = "no lesion in this test set: undefined"
                        result["detection"][threshold] = summary
        self.result = self._summary(has_reconstruction, per_set, notes)
        self._log(trainer)
        self._reset()

    def _restoration_results(self, test_sets: list[str], terms: dict[str, dict[str, np.ndarray]],
                             features: dict[tuple[str, str], np.ndarray], notes: dict[str, str]
                             ) -> dict[str, dict[str, Any]]:
        """Per test set: the RQI ingredients (healthy set) or the CACI / AHI ingredients and indices (lesion sets).
        Undefined values are NaN (``null`` in ``metrics.json``), with a note."""
        results: dict[str, dict[str, Any]] = {}
        rqi = math.nan
        healthy = terms.get(HEALTHY_TEST_SET, {})
        if len(healthy.get("mae", [])):
            rqi, self._rqi_reading, note = rqi_index(healthy["mae"], healthy["mae_blank"], healthy.get("lpips_rec"),
                                                     healthy.get("lpips_blank"))
            results[HEALTHY_TEST_SET] = {"rqi": rqi, "mae": float(healthy["mae"].mean()),
                                         "ssim": float(healthy["ssim"].mean()),
                                         "lpips": _mean_or_nan(healthy.get("lpips_rec")),
                                         "lpips_blank": _mean_or_nan(healthy.get("lpips_blank"))}
            if note:
                notes[f"{HEALTHY_TEST_SET}.normative.rqi"] = note
            if "lpips_rec" not in healthy:
                notes[f"{HEALTHY_TEST_SET}.normative.lpips"] = self._lpips_notes.get("alex", "LPIPS unavailable")
        unseen = features.get((HEALTHY_TEST_SET, "inputs"))
        fd_unseen = frechet_distance(unseen, self._reference) if unseen is not None and len(unseen) > 1 else math.nan
        self._fd = {"unseen_healthy": fd_unseen}
        for name in test_sets:
            if name == HEALTHY_TEST_SET:
                continue
            entry: dict[str, Any] = {"rqi": rqi}
            if math.isnan(rqi):
                notes[f"{name}.normative.rqi"] = f"no '{HEALTHY_TEST_SET}' test set: RQI undefined"
            set_terms = terms.get(name, {})
            if not len(set_terms.get("n_lesion", [])):
                notes[f"{name}.normative"] = "no slice with lesion pixels: CACI and AHI undefined"
                results[name] = {**entry, **dict.fromkeys(("caci", "ahi", "composite"), math.nan)}
                continue
            pooled = {f"{kind}_{region}": math.nan for kind in ("mse", "ssim", "lpips")
                      for region in ("lesion", "healthy")}  # LPIPS stays NaN without its weights
            pooled.update(pool_conservation(set_terms))
            caci, caci_note = caci_index(pooled["mse_lesion"], pooled["mse_healthy"])
            entry.update(pooled, caci=caci)
            if caci_note:
                notes[f"{name}.normative.caci"] = caci_note
            inputs, restored = features.get((name, "inputs")), features.get((name, "restorations"))
            ahi = math.nan
            if math.isnan(fd_unseen) or inputs is None or len(inputs) < 2:
                notes[f"{name}.normative.ahi"] = "needs at least two healthy test and two lesion slices"
            else:
                fd_p, fd_rp = frechet_distance(inputs, self._reference), frechet_distance(restored, self._reference)
                ahi, ahi_note = ahi_index(fd_p, fd_rp, fd_unseen)
                self._fd[name] = {"pathological": fd_p, "restored": fd_rp}
                entry.update(fd_pathological=fd_p, fd_restored=fd_rp, fd_unseen_healthy=fd_unseen)
                if ahi_note:
                    notes[f"{name}.normative.ahi"] = ahi_note
            entry["ahi"] = ahi
            entry.update(composite_index(rqi, caci, ahi))
            results[name] = entry
        return results

    def _summary(self, has_reconstruction: bool, per_set: dict[str, dict[str, Any]], notes: dict[str, str]
                 ) -> dict[str, Any]:
        lesion_sets = [entry for name, entry in per_set.items() if name != HEALTHY_TEST_SET]

        def mean_of(key: str) -> float:  # NaN when any set's value is undefined
            return float(np.mean([entry[key] for entry in lesion_sets])) if lesion_sets else math.nan

        return {
            "reading": "bercea_v1 (RQI / AHI / CACI combinations are documented readings, see docs/evaluation.md)",
            "rqi_reading": self._rqi_reading,
            "feature_extractor": getattr(self._extractor, "name", str(self._extractor)),
            "feature_extractor_note": self._extractor_note,
            "lpips": {backbone: "loaded" if backbone in self._lpips else self._lpips_notes[backbone]
                      for backbone in ("alex", "squeeze")},
            "reference_images": len(self._reference),
            "rqi": per_set.get(HEALTHY_TEST_SET, {}).get("rqi", math.nan),
            "ahi_mean": mean_of("ahi"), "caci_mean": mean_of("caci"), "composite_mean": mean_of("composite"),
            "frechet": self._fd,
            "detection_min_fraction": self.detection_min_fraction,
            "notes": notes if has_reconstruction else {"normative": NO_RECONSTRUCTION},
        }

    def _log(self, trainer: pl.Trainer) -> None:
        """TensorBoard: the run-level indices and every per-set number (``test[<variant>]/<set>/normative/...``)."""
        if trainer.logger is None or not trainer.is_global_zero or self.result is None:
            return
        scalars = {f"normative/{key}": self.result[key] for key in ("rqi", "ahi_mean", "caci_mean", "composite_mean")
                   if math.isfinite(self.result[key])}
        for variant, results in self.evaluation.results.items():
            for name, result in results.items():
                added = {key: result[key] for key in ("normative", "detection") if key in result}
                scalars.update({f"{stage_prefix('test', variant)}/{name}/{key}": value
                                for key, value in flatten_scalars(added).items()})
        if scalars:
            trainer.logger.log_metrics(scalars, step=trainer.global_step)


def _detection(per_lesion: dict[str, np.ndarray]) -> dict[str, Any]:
    """The detection summary of one test set at one threshold; size bins at the 25th / 75th percentiles of the
    set's lesion (connected component) areas."""
    areas = np.asarray(per_lesion.get("area", np.zeros(0)), dtype=float)
    edges = np.unique(np.percentile(areas, [25, 75])).tolist() if len(areas) else [1.0]
    return summarise_detection(per_lesion, edges)


def _concat_features(parts: list[dict[tuple[str, str], list[np.ndarray]]]) -> dict[tuple[str, str], list[np.ndarray]]:
    merged: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for part in parts:
        for key, arrays in part.items():
            merged[key].extend(arrays)
    return merged


def dataset_key(resolved_dataset: dict[str, Any]) -> str:
    """A short hash of a dataset's resolved configuration (the cache key of its offline feature encoder)."""
    return hashlib.sha256(json.dumps(resolved_dataset, sort_keys=True, default=str).encode()).hexdigest()[:12]
