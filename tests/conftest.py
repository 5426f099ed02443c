"""Shared fixtures: tiny NIfTI datasets written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("PYTHONHASHSEED", "0")

SHAPE = (30, 34, 16)  # x (R-L), y (A-P), z (I-S)


def ellipsoid(shape: tuple[int, int, int], radii: tuple[float, float, float]) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    return (sum((g / r) ** 2 for g, r in zip(grid, radii, strict=True)) <= 1.0).astype(np.uint8)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def make_subject(folder: Path, name: str, rng: np.random.Generator, lesion_at: tuple[slice, ...] | None = None) -> dict:
    """A tiny 'brain': an ellipsoid roi of noisy tissue, optionally with a bright cubic lesion at ``lesion_at``."""
    roi = ellipsoid(SHAPE, (13, 15, 7))
    image = (0.5 + 0.05 * rng.standard_normal(SHAPE)).astype(np.float32) * roi
    mask = np.zeros(SHAPE, np.uint8)
    if lesion_at is not None:
        mask[lesion_at] = 1
        mask *= roi
        image[mask > 0] = 1.0
    return {
        "subject": name,
        "image": str(write_nifti(folder / "images" / f"{name}.nii.gz", image).relative_to(folder)),
        "mask": str(write_nifti(folder / "masks" / f"{name}.nii.gz", mask).relative_to(folder)),
        "roi": str(write_nifti(folder / "rois" / f"{name}.nii.gz", roi).relative_to(folder)),
    }


LESION = (slice(10, 16), slice(12, 20), slice(6, 10))


@pytest.fixture
def tiny_nifti(tmp_path: Path) -> dict:
    """Split CSVs (train / val / test healthy / test lesion) of tiny volumes; CSVs live in the data folder."""
    rng = np.random.default_rng(0)
    splits = {
        "train": [make_subject(tmp_path, f"tr{i}", rng) for i in range(3)],
        "val": [make_subject(tmp_path, f"va{i}", rng) for i in range(2)],
        "test_healthy": [make_subject(tmp_path, f"th{i}", rng) for i in range(2)],
        "test_lesion": [make_subject(tmp_path, f"tl{i}", rng, LESION) for i in range(2)],
    }
    csvs = {}
    for name, rows in splits.items():
        csvs[name] = tmp_path / f"{name}.csv"
        pd.DataFrame(rows).to_csv(csvs[name], index=False)
    return {"root": tmp_path, "csvs": csvs, "cache": tmp_path / "cache"}


def nifti_datamodule(tiny: dict, **overrides):
    from datamodules.nifti import NiftiDataModule

    csvs = tiny["csvs"]
    args = dict(train_csv=str(csvs["train"]), val_csv=str(csvs["val"]),
                test_csvs={"healthy": str(csvs["test_healthy"]), "lesion": str(csvs["test_lesion"])},
                cache_dir=str(tiny["cache"]), image_size=32, min_roi_fraction=0.05, min_lesion_pixels=1,
                batch_size=4, progress=False)
    args.update(overrides)
    return NiftiDataModule(**args)


TINY_DATA = {"n_train": 3, "n_val": 2, "n_test_healthy": 1, "n_test_per_lesion": 2, "n_unlabelled": 0,
             "lesion_kinds": ["tumor", "stroke"], "resolution_mm": 4.0, "image_size": 32, "batch_size": 16,
             "min_lesion_pixels": 3}
TINY_TRAINER = {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "log_every_n_steps": 1,
                "num_sanity_val_steps": 0, "deterministic": True}


@pytest.fixture(scope="session")
def tiny_sweep_setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic-brain dataset config (4 mm, 32 px; generated once per session) and a 2-epoch CPU profile."""
    root = tmp_path_factory.mktemp("tiny_sweeps")
    (root / "tiny_brain.yaml").write_text(yaml.safe_dump({
        "class_path": "datamodules.synthetic_brain.SyntheticBrainDataModule",
        "init_args": {"data_root": str(root / "data"), **TINY_DATA}}))
    (root / "tiny_cpu.yaml").write_text(yaml.safe_dump({"trainer": TINY_TRAINER, "early_stopping_patience": None,
                                                        "image_grid_every_n_epochs": 1}))
    return {"root": root, "dataset": root / "tiny_brain.yaml", "trainer": root / "tiny_cpu.yaml"}
