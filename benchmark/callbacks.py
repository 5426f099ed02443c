"""Lightning callbacks of the harness: evaluation on the test sets, TensorBoard image grids and histograms."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor

from benchmark.metrics import DetectionMetrics, check_output
from lightning_modules.base import AnomalyOutput


class EvaluationCallback(pl.Callback):
    """Feeds every test batch and its ``AnomalyOutput`` to the metrics of its test set; results in ``self.results``.

    Metric states are torchmetrics states, so under DDP each rank accumulates its shard and ``compute`` syncs.
    """

    def __init__(self, method_name: str) -> None:
        self.method_name = method_name
        self.metrics: dict[str, DetectionMetrics] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def _names(self, trainer: pl.Trainer) -> list[str]:
        return list(trainer.datamodule.test_set_names)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metrics = {name: DetectionMetrics().to(pl_module.device) for name in self._names(trainer)}
        self.results = {}

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        check_output(outputs, batch, self.method_name)
        self.metrics[self._names(trainer)[dataloader_idx]].update(batch, outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results = {name: metrics.compute() for name, metrics in self.metrics.items()}
        scalars = {f"test/{name}/{key}": value for name, result in self.results.items()
                   for key, value in result.items() if isinstance(value, float)}
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(scalars, step=trainer.global_step)


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
    """Logs image grids (input / reconstruction / anomaly map / mask) and anomaly-map histograms to TensorBoard:
    the first validation batch every ``every_n_epochs`` epochs and one batch of every test set."""

    def __init__(self, every_n_epochs: int = 1, max_rows: int = 8) -> None:
        self.every_n_epochs = max(1, every_n_epochs)
        self.max_rows = max_rows

    @staticmethod
    def _writer(trainer: pl.Trainer):
        if not trainer.is_global_zero:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _log(self, trainer: pl.Trainer, tag: str, batch: Any, outputs: Any) -> None:
        writer = self._writer(trainer)
        if writer is None or not isinstance(outputs, AnomalyOutput):
            return
        writer.add_image(f"{tag}/input_reconstruction_map_mask", image_grid(batch, outputs, self.max_rows),
                         global_step=trainer.global_step, dataformats="CHW")
        roi = batch["roi"] > 0.5
        values = outputs.anomaly_map.to(roi.device)[roi]
        if values.numel():
            writer.add_histogram(f"{tag}/anomaly_map_in_roi", values.float().cpu(), global_step=trainer.global_step)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._log(trainer, "val", batch, outputs)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fallback: dict[int, tuple[Any, Any]] = {}
        self._logged: set[int] = set()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log the first batch of each test set that contains an anomalous slice (else its first batch)."""
        if dataloader_idx in self._logged:
            return
        if bool((batch["label"] > 0).any()):
            self._log(trainer, f"test/{trainer.datamodule.test_set_names[dataloader_idx]}", batch, outputs)
            self._logged.add(dataloader_idx)
        elif dataloader_idx not in self._fallback:
            self._fallback[dataloader_idx] = (batch, outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for index, (batch, outputs) in self._fallback.items():
            if index not in self._logged:
                self._log(trainer, f"test/{trainer.datamodule.test_set_names[index]}", batch, outputs)
        self._fallback.clear()
