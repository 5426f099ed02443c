"""Lightning callbacks of the harness: evaluation on the test sets, TensorBoard image grids and histograms."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from benchmark.metrics import (
    EvaluationSettings,
    HealthyCalibration,
    SetLayout,
    TestSetEvaluator,
    add_vs_healthy,
    check_output,
)
from benchmark.metrics.subject_counts import SubjectCounts
from benchmark.metrics.volumes import slices_per_subject
from benchmark.qualitative import N_SLICES
from benchmark.qualitative_callback import QualitativeCallback
from datamodules.base import AnomalyDataModule, DatasetSplits
from lightning_modules.base import AnomalyOutput


def stage_prefix(stage: str, variant: str | None) -> str:
    """The metric-name prefix of a stage (``test``, ``calibration``, ...) and score variant: ``test[combi]``, or the
    stage alone for a method without variants."""
    return stage if variant is None else f"{stage}[{variant}]"


class EvaluationCallback(pl.Callback):
    """The evaluation engine inside Lightning's loops.

    ``trainer.validate`` (with the weights under test) calibrates thresholds on the healthy validation split;
    ``trainer.test`` then feeds every test batch and its ``AnomalyOutput`` (returned by the ``AnomalyModule``
    base class's steps) to the evaluator of its test set. Validation during ``fit`` is left alone. Metric states
    are torchmetrics states, so under DDP each rank accumulates its shard and ``compute`` syncs.

    A method with score variants gets a calibration and evaluators per variant. Results, keyed by variant
    (``None`` for a method without variants): ``calibration``, ``results`` (nested metrics per test set),
    ``curves`` (ROC / PR curves and slice scores per test set) and ``subject_counts`` (per-subject counts per test
    set, for the subject bootstrap; the same on every rank).
    """

    def __init__(self, method_name: str, settings: EvaluationSettings | None = None) -> None:
        self.method_name = method_name
        self.settings = settings or EvaluationSettings()
        self.calibration: dict[str | None, dict[str, Any]] = {}
        self.results: dict[str | None, dict[str, dict[str, Any]]] = {}
        self.curves: dict[str | None, dict[str, dict[str, Any]]] = {}
        self.subject_counts: dict[str | None, dict[str, SubjectCounts]] = {}
        self._calibrators: dict[str | None, HealthyCalibration] = {}
        self._evaluators: dict[tuple[str | None, str], TestSetEvaluator] = {}

    @staticmethod
    def _splits(trainer: pl.Trainer) -> DatasetSplits:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, AnomalyDataModule):
            raise TypeError("the evaluation engine needs an AnomalyDataModule (subjects and masks of every split)")
        return datamodule._splits

    @staticmethod
    def _variants(pl_module: pl.LightningModule) -> list[str | None]:
        return list(getattr(pl_module, "score_variants", ())) or [None]

    def _check(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> None:
        check_output(outputs, batch, self.method_name, tuple(getattr(pl_module, "score_variants", ())))

    # ---- calibration (trainer.validate) ------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.VALIDATING:
            return
        layout = slices_per_subject(self._splits(trainer).val.subjects)
        self._calibrators = {variant: HealthyCalibration(self.settings, layout).to(pl_module.device)
                             for variant in self._variants(pl_module)}

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._calibrators:
            self._check(pl_module, outputs, batch)
            for variant, output in outputs.by_variant().items():
                self._calibrators[variant].update(batch, output)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._calibrators:
            return
        self.calibration = {variant: calibrator.compute() for variant, calibrator in self._calibrators.items()}
        self._calibrators = {}
        scalars = {f"{stage_prefix('calibration', variant)}/{name}/{key}": value
                   for variant, calibration in self.calibration.items()
                   for name, entry in calibration["thresholds"].items()
                   for key, value in entry.items() if key != "target_fpr" and math.isfinite(value)}
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(scalars, step=trainer.global_step)

    # ---- test sets (trainer.test) ------------------------------------------------------------------------------
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tests = self._splits(trainer).tests
        layouts = {name: SetLayout.from_arrays(arrays.subjects, arrays.masks) for name, arrays in tests.items()}
        self._evaluators = {}
        for variant in self._variants(pl_module):
            calibration = self.calibration.get(variant)
            thresholds = None if calibration is None else {
                name: entry["threshold"] for name, entry in calibration["thresholds"].items()}
            for name, layout in layouts.items():
                self._evaluators[variant, name] = TestSetEvaluator(self.settings, layout, thresholds).to(
                    pl_module.device)
        self.results, self.curves, self.subject_counts = {}, {}, {}

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check(pl_module, outputs, batch)
        test_set = trainer.datamodule.test_set_names[dataloader_idx]
        for variant, output in outputs.by_variant().items():
            self._evaluators[variant, test_set].update(batch, output)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for (variant, name), evaluator in self._evaluators.items():
            self.results.setdefault(variant, {})[name], self.curves.setdefault(variant, {})[name] = \
                evaluator.compute()
            self.subject_counts.setdefault(variant, {})[name] = evaluator.subject_counts
        self._evaluators = {}
        for variant, results in self.results.items():
            add_vs_healthy(results, self.curves[variant])
        if trainer.logger is None or not trainer.is_global_zero:
            return
        trainer.logger.log_metrics(
            {f"{stage_prefix('test', variant)}/{name}/{key}": value for variant, results in self.results.items()
             for name, result in results.items() for key, value in flatten_scalars(result).items()},
            step=trainer.global_step)
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        for variant, results in self.results.items():
            prefix = stage_prefix("test", variant)
            for name, result in results.items():
                curves = self.curves[variant][name]
                _log_pr_curve(writer, f"{prefix}/{name}/pixel_pr_curve", curves["pr"], result["pixel"],
                              trainer.global_step)
                for label, scores in curves["sample_scores"].items():
                    if scores:
                        writer.add_histogram(f"{prefix}/{name}/anomaly_score_{label}", np.asarray(scores),
                                             global_step=trainer.global_step)


def flatten_scalars(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested result as ``{"pixel/auroc": value, ...}`` (notes and lists skipped)."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_scalars(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def tensorboard_writer(trainer: pl.Trainer):
    """The ``SummaryWriter`` of the trainer's TensorBoard logger on the global-zero rank (``None`` elsewhere or
    without one)."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _log_pr_curve(writer, tag: str, pr: dict[str, list[float]], pixel: dict[str, Any], step: int,
                  max_points: int = 127) -> None:
    """TensorBoard's PR-curve panel from the engine's curve (at most 127 points, TensorBoard's limit)."""
    n_pos, n_neg = pixel["n_lesion_pixels"], pixel["n_roi_pixels"] - pixel["n_lesion_pixels"]
    if n_pos == 0 or len(pr["recall"]) < 2:
        return
    keep = np.unique(np.linspace(0, len(pr["recall"]) - 1, max_points).round().astype(int))[::-1]
    recall, precision = np.asarray(pr["recall"])[keep], np.asarray(pr["precision"])[keep]
    tp = recall * n_pos
    fp = np.where(precision > 0, tp / np.maximum(precision, 1e-12) - tp, n_neg)
    writer.add_pr_curve_raw(tag, tp, fp, n_neg - fp, n_pos - tp, precision, recall, global_step=step,
                            num_thresholds=len(keep))


def _normalise(images: Tensor) -> Tensor:
    """Scale to [0, 1] jointly over the tensor (keeps relative magnitudes between samples)."""
    lo, hi = images.min(), images.max()
    return (images - lo) / (hi - lo) if hi > lo else torch.zeros_like(images)


def image_grid(batch: dict[str, Any], output: AnomalyOutput, max_rows: int = 8) -> Tensor:
    """[1, rows*H, 4*W] grid: input | reconstruction (blank if none) | anomaly map | ground-truth mask."""
    n = min(max_rows, batch["image"].shape[0])
    image = batch["image"][:n].mean(dim=1, keepdim=True).float().cpu()
    rec = output.reconstruction
    rec = torch.zeros_like(image) if rec is None else rec[:n].mean(dim=1, keepdim=True).float().cpu().clamp(0, 1)
    anomaly_map = _normalise(output.anomaly_map[:n].float().cpu())
    mask = batch["mask"][:n].float().cpu()
    columns = torch.cat([image, rec, anomaly_map, mask], dim=3)  # [n,1,H,4W]
    return torch.cat(list(columns), dim=1)  # [1, n*H, 4W]


class ImageGridCallback(pl.Callback):
    """Logs image grids (input / reconstruction / anomaly map / mask) and anomaly-map histograms of the first
    validation batch to TensorBoard every ``every_n_epochs`` epochs, one grid per score variant. At test time it
    runs a :class:`~benchmark.qualitative_callback.QualitativeCallback`: the ``n_slices`` qualitative slices of
    every test set, saved as ``figures/qualitative_<test set>.npz`` and ``.png`` for the report."""

    def __init__(self, every_n_epochs: int = 1, max_rows: int = 8, n_slices: int = N_SLICES) -> None:
        self.every_n_epochs = max(1, every_n_epochs)
        self.max_rows = max_rows
        self.qualitative = QualitativeCallback(n_slices)

    def _log(self, trainer: pl.Trainer, stage: str, batch: Any, outputs: Any) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not isinstance(outputs, AnomalyOutput):
            return
        for variant, output in outputs.by_variant().items():
            tag = stage_prefix(stage, variant)
            writer.add_image(f"{tag}/input_reconstruction_map_mask", image_grid(batch, output, self.max_rows),
                             global_step=trainer.global_step, dataformats="CHW")
            roi = batch["roi"] > 0.5
            values = output.anomaly_map.to(roi.device)[roi]
            if values.numel():
                writer.add_histogram(f"{tag}/anomaly_map_in_roi", values.float().cpu(),
                                     global_step=trainer.global_step)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._log(trainer, "val", batch, outputs)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.qualitative.on_test_epoch_start(trainer, pl_module)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.qualitative.on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.qualitative.on_test_epoch_end(trainer, pl_module)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class FiniteLossGuard(pl.Callback):
    """Stops a run whose training loss becomes NaN / Inf, so the runner records it as failed instead of testing a
    broken model (checked on the step output, and on logged ``train/*`` values for manual optimisation)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        values = {"loss": loss} if isinstance(loss, Tensor) else {}
        values.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
        for name, value in values.items():
            if isinstance(value, Tensor) and value.numel() and not bool(torch.isfinite(value.detach()).all()):
                raise NonFiniteLossError(f"non-finite training {name} ({float(value.detach().float().mean())}) at "
                                         f"epoch {trainer.current_epoch}, step {trainer.global_step}")


class TrainingClock(pl.Callback):
    """Training seconds over every attempt of a run: each checkpoint stores the time trained so far, and a run
    resumed from it counts on from there, so a resumed job reports its whole training time (``run.train_time_s``),
    not only its last attempt's."""

    def __init__(self) -> None:
        self.earlier = 0.0  # seconds of the attempts before this one (from the checkpoint resumed)
        self._started: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds trained over all attempts until now."""
        return self.earlier + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier = float(state_dict.get("train_seconds", 0.0))


class RandomStateCheckpoint(pl.Callback):
    """Stores the torch / CUDA / numpy / Python random states in every checkpoint and restores them on resume, so a
    run resumed from ``last.ckpt`` continues exactly as an uninterrupted one would (Lightning does not save them)."""

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        kind, keys, *rest = states["numpy"]  # plain lists: checkpoints load with torch.load(weights_only=True)
        return {**states, "numpy": (kind, keys.tolist(), *rest)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kind, keys, *rest = state_dict["numpy"]
        _set_rng_states({**state_dict, "numpy": (kind, np.asarray(keys, dtype=np.uint32), *rest)})
