"""Keeps the qualitative slices' outputs as test batches stream by and writes them to the run folder.

At test start each test set's slices are chosen from the datamodule's split (:func:`benchmark.qualitative.
select_slices`: the same slices for every method); every test batch is searched for them by ``(subject, slice)``
and their anomaly maps (per score variant) and reconstruction are kept. At test end the kept arrays are summed over
DDP ranks (each slice is seen by exactly one rank, whole subjects per rank) and rank 0 writes, per test set,
``figures/qualitative_<test set>.npz`` and ``figures/qualitative_<test set>[<variant>].png``
(:mod:`benchmark.naming`), and the figure to TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from benchmark.naming import qualitative_arrays_name, qualitative_name
from benchmark.qualitative import N_SLICES, QualitativeSlices, plot_run_qualitative, save_qualitative
from datamodules.base import AnomalyDataModule
from lightning_modules.base import AnomalyOutput


class _Capture:
    """One test set's shown slices and, per variant, the maps kept so far (zeros until seen)."""

    def __init__(self, shown: QualitativeSlices, variants: list[str | None]) -> None:
        self.shown = shown
        self.position = {key: i for i, key in reversed(list(enumerate(shown.keys)))}  # first one if repeated
        k, height, width = shown.images.shape
        self.maps = np.zeros((len(variants), k, height, width), dtype=np.float32)
        self.reconstruction = np.zeros((k, height, width), dtype=np.float32)
        self.seen = np.zeros((2, k), dtype=np.float32)  # map seen, reconstruction seen
        self.variants = variants

    def update(self, batch: dict[str, Any], outputs: AnomalyOutput) -> None:
        slices = batch["slice"].tolist() if torch.is_tensor(batch["slice"]) else list(batch["slice"])
        keys = zip(map(str, batch["subject"]), map(int, slices), strict=True)
        hits = [(b, self.position[key]) for b, key in enumerate(keys) if key in self.position]
        if not hits:
            return
        rows, positions = [b for b, _ in hits], [p for _, p in hits]
        by_variant = outputs.by_variant()
        for v, variant in enumerate(self.variants):
            output = by_variant.get(variant)
            if output is not None:
                self.maps[v, positions] = _grey(output.anomaly_map[rows])
        self.seen[0, positions] = 1.0
        if outputs.reconstruction is not None:
            self.reconstruction[positions] = _grey(outputs.reconstruction[rows])
            self.seen[1, positions] = 1.0

    def gather(self, trainer: pl.Trainer, device: torch.device) -> None:
        """Sum the kept arrays over the DDP ranks (a no-op on one device)."""
        strategy = trainer.strategy
        for name in ("maps", "reconstruction", "seen"):
            summed = strategy.reduce(torch.from_numpy(getattr(self, name)).to(device), reduce_op="sum")
            setattr(self, name, summed.cpu().numpy())

    def result(self) -> QualitativeSlices | None:
        """The seen slices with their outputs (``None`` when no shown slice came by)."""
        seen = np.flatnonzero(self.seen[0] > 0)
        if not len(seen):
            return None
        shown = self.shown
        shown.maps = dict(zip(self.variants, self.maps, strict=True))
        shown.reconstruction = self.reconstruction if bool((self.seen[1][seen] > 0).all()) else None
        return shown.keep(seen)


def _grey(values: torch.Tensor) -> np.ndarray:
    """``[b,C,H,W]`` -> ``[b,H,W]`` float32 on the CPU (mean over channels)."""
    return values.detach().float().mean(dim=1).cpu().numpy()


class QualitativeCallback(pl.Callback):
    """The qualitative slices of every test set (module docstring); ``n_slices`` per test set."""

    def __init__(self, n_slices: int = N_SLICES) -> None:
        self.n_slices = n_slices
        self._captures: dict[str, _Capture] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        self._captures = {}
        if not isinstance(datamodule, AnomalyDataModule):
            return
        variants = list(getattr(pl_module, "score_variants", ())) or [None]
        for name, arrays in datamodule._splits.tests.items():
            shown = QualitativeSlices.from_split(name, arrays.images, arrays.masks, arrays.rois, arrays.subjects,
                                                 arrays.slices, self.n_slices)
            self._captures[name] = _Capture(shown, variants)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._captures and isinstance(outputs, AnomalyOutput):
            self._captures[trainer.datamodule.test_set_names[dataloader_idx]].update(batch, outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        captures, self._captures = self._captures, {}
        for capture in captures.values():  # every rank, in the same order: the sums are collective
            capture.gather(trainer, pl_module.device)
        if not trainer.is_global_zero:
            return
        figures = Path(trainer.default_root_dir) / "figures"
        writer = _tensorboard(trainer)
        for name, capture in captures.items():
            shown = capture.result()
            if shown is None:
                continue
            save_qualitative(figures / qualitative_arrays_name(name), shown)
            for variant in shown.maps:
                title = name if variant is None else f"{name} [{variant}]"
                fig = plot_run_qualitative(shown, variant, f"{type(pl_module).__name__}: {title}")
                fig.savefig(figures / qualitative_name(name, variant), dpi=100)
                if writer is not None:
                    tag = "test" if variant is None else f"test[{variant}]"
                    writer.add_figure(f"{tag}/{name}/input_reconstruction_map_mask", fig,
                                      global_step=trainer.global_step, close=False)
                    _log_histogram(writer, f"{tag}/{name}/anomaly_map_in_roi", shown, variant, trainer.global_step)
                plt.close(fig)


def _tensorboard(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _log_histogram(writer, tag: str, shown: QualitativeSlices, variant: str | None, step: int) -> None:
    values = shown.maps[variant][shown.rois > 0]
    if values.size:
        writer.add_histogram(tag, values, global_step=step)
