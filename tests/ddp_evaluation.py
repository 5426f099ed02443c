"""Helper script of test_ddp_evaluation.py (not a test): calibrate and test one fixed method on N CPU devices.

Usage: ``python tests/ddp_evaluation.py OUT.json DEVICES DATA_ROOT``. Lightning's ``ddp`` launcher re-runs this
script once per extra rank; rank 0 writes the calibration, metrics (with their subject-bootstrap intervals),
curves and per-subject counts of two evaluation profiles.
"""

from __future__ import annotations

import json
import sys
import warnings

import pytorch_lightning as pl

from benchmark.callbacks import EvaluationCallback
from benchmark.io import write_json
from benchmark.metrics import EvaluationSettings
from datamodules.synthetic_brain import SyntheticBrainDataModule
from lightning_modules.baselines import IntensityBaseline

TINY = {"seed": 3, "n_train": 1, "n_val": 2, "n_test_healthy": 1, "n_test_per_lesion": 3, "n_unlabelled": 0,
        "lesion_kinds": ("tumor", "stroke"), "resolution_mm": 4.0, "image_size": 32, "batch_size": 5,
        "min_lesion_pixels": 3, "progress": False}
PROFILES = {
    "none": {},
    "volumetric": {"postprocessing": {"name": "baur", "median_size": 3, "roi_erosion_iterations": 1,
                                      "min_component_size": 4}},
}


def evaluate(devices: int, data_root: str) -> dict:
    results = {}
    for name, options in PROFILES.items():
        datamodule = SyntheticBrainDataModule(data_root=data_root, **TINY)
        callback = EvaluationCallback("intensity", EvaluationSettings.from_mapping(options, name))
        trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                             logger=False, callbacks=[callback], enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False)
        model = IntensityBaseline()
        trainer.validate(model, datamodule=datamodule, verbose=False)
        trainer.test(model, datamodule=datamodule, verbose=False)
        results[name] = {"calibration": callback.calibration[None], "test_sets": callback.results[None],
                         "curves": callback.curves[None], "rank": trainer.global_rank,
                         "subject_counts": {test_set: counts.to_json()
                                            for test_set, counts in callback.subject_counts[None].items()}}
    return results


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out, n_devices, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    SyntheticBrainDataModule(data_root=root, **TINY).prepare_data()
    result = evaluate(n_devices, root)
    if result["none"]["rank"] == 0:
        write_json(out, json.loads(json.dumps(result)))
