"""Helper script of test_qualitative.py (not a test): the qualitative slices of a fixed method on N CPU devices.

Usage: ``python tests/ddp_qualitative.py RUN_DIR DEVICES DATA_ROOT``. Lightning's ``ddp`` launcher re-runs this
script once per extra rank; rank 0 writes the 16 slices' ``RUN_DIR/figures/qualitative_<test set>.npz`` and ``.png``.
"""

from __future__ import annotations

import sys
import warnings

import pytorch_lightning as pl
import torch
from torch import Tensor

from benchmark.qualitative_callback import QualitativeCallback
from datamodules.synthetic_brain import SyntheticBrainDataModule
from lightning_modules.base import AnomalyModule, AnomalyOutput

TINY = {"seed": 3, "n_train": 1, "n_val": 1, "n_test_healthy": 2, "n_test_per_lesion": 3, "n_unlabelled": 0,
        "lesion_kinds": ("tumor",), "resolution_mm": 4.0, "image_size": 32, "batch_size": 5,
        "min_lesion_pixels": 3, "progress": False}
N_SLICES = 16  # enough to span subjects, so both ranks hold some of them


class TwoScores(AnomalyModule):
    """No training: two score variants (intensity and its square) and a reconstruction (half the input)."""

    requires_training = False

    @property
    def score_variants(self) -> tuple[str, ...]:
        return ("bright", "square")

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        bright = image.mean(dim=1, keepdim=True)
        return AnomalyOutput.from_variants({"bright": (bright, bright.flatten(1).amax(1)),
                                            "square": (bright ** 2, bright.flatten(1).mean(1))}, 0.5 * image)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    run_dir, devices, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    SyntheticBrainDataModule(data_root=root, **TINY).prepare_data()
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, callbacks=[QualitativeCallback(N_SLICES)], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=run_dir)
    trainer.test(TwoScores(), datamodule=SyntheticBrainDataModule(data_root=root, **TINY), verbose=False)
