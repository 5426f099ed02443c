"""NIfTI datamodule: split CSVs of volumes -> preprocessed, memory-mapped axial slices.

Split CSV format (one row per subject / volume; paths absolute or relative to the CSV's folder):

=========  ========  =============================================================
column     required  meaning
=========  ========  =============================================================
image      yes       the intensity volume (``.nii`` / ``.nii.gz``)
mask       no        binary lesion mask (0/1), same grid as the image; empty = none
roi        no        binary evaluation region (brain mask); empty = whole volume
subject    no        subject id (default: the image file name without extension)
=========  ========  =============================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from datamodules.base import AnomalyDataModule, DatasetSplits
from datamodules.errors import DataError
from datamodules.preprocessing import PreprocessingSettings, VolumeRecord
from datamodules.slice_cache import SliceCache

CSV_COLUMNS = ("image", "mask", "roi", "subject")


def default_cache_dir() -> Path:
    """``$NORMBENCH_CACHE_DIR`` or ``~/.cache/normbench/slices``."""
    return Path(os.environ.get("NORMBENCH_CACHE_DIR", Path.home() / ".cache" / "normbench" / "slices"))


def _subject_from_path(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def read_split_csv(csv_path: str | Path) -> list[VolumeRecord]:
    """Read a split CSV into records, with errors that name the CSV, the row and the column."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"split CSV not found: {csv_path}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"cannot parse split CSV {csv_path}: {error}") from error
    unknown = [c for c in table.columns if c not in CSV_COLUMNS]
    if unknown:
        raise DataError(f"split CSV {csv_path} has unknown column(s) {unknown}; allowed: {list(CSV_COLUMNS)}")
    if "image" not in table.columns:
        raise DataError(f"split CSV {csv_path} has no 'image' column")
    if table.empty:
        raise DataError(f"split CSV {csv_path} is empty: the split has no volumes")

    def resolve(value: str) -> Path | None:
        value = value.strip()
        if not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else (csv_path.parent / path).resolve()

    records, seen = [], set()
    for row_number, row in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
        image = resolve(row["image"])
        if image is None:
            raise DataError(f"split CSV {csv_path}, row {row_number}: empty 'image' entry")
        subject = (row.get("subject") or "").strip() or _subject_from_path(row["image"])
        if subject in seen:
            raise DataError(f"split CSV {csv_path}, row {row_number}: subject {subject!r} appears twice")
        seen.add(subject)
        records.append(VolumeRecord(subject, image, resolve(row.get("mask", "")), resolve(row.get("roi", ""))))
    return records


class NiftiDataModule(AnomalyDataModule):
    """Slices of NIfTI volumes listed in split CSVs, preprocessed once into a memory-mapped cache.

    Args:
        train_csv: healthy training volumes.
        val_csv: healthy validation volumes (early stopping, threshold calibration).
        test_csvs: test set name -> CSV, e.g. ``{"healthy": ..., "tumor": ...}``.
        unlabelled_csv: optional pool that may contain anomalies (masks unused), never overlapping the test sets.
        cache_dir: where slice caches live (default ``$NORMBENCH_CACHE_DIR`` or ``~/.cache/normbench/slices``).
        image_size, intensity_percentiles, zero_outside_roi, crop_to_roi, slice_range, min_roi_fraction,
        min_lesion_pixels: see :class:`datamodules.preprocessing.PreprocessingSettings`.
    """

    def __init__(
        self,
        train_csv: str,
        val_csv: str,
        test_csvs: dict[str, str],
        unlabelled_csv: str | None = None,
        cache_dir: str | None = None,
        image_size: int = 64,
        intensity_percentiles: tuple[float, float] = (1.0, 99.0),
        zero_outside_roi: bool = True,
        crop_to_roi: bool = True,
        slice_range: tuple[float, float] | None = None,
        min_roi_fraction: float = 0.05,
        min_lesion_pixels: int = 10,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        self.csvs: dict[str, Path] = {"train": Path(train_csv), "val": Path(val_csv)}
        self.csvs.update({f"test/{name}": Path(path) for name, path in test_csvs.items()})
        if unlabelled_csv:
            self.csvs["unlabelled"] = Path(unlabelled_csv)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.settings = PreprocessingSettings(
            image_size=image_size,
            intensity_percentiles=tuple(intensity_percentiles),
            zero_outside_roi=zero_outside_roi,
            crop_to_roi=crop_to_roi,
            slice_range=tuple(slice_range) if slice_range is not None else None,
            min_roi_fraction=min_roi_fraction,
            min_lesion_pixels=min_lesion_pixels,
        )
        self.progress = progress

    def caches(self) -> dict[str, SliceCache]:
        """One slice cache per split (cheap: hashes file metadata, reads no volume)."""
        return {name: SliceCache(self.cache_dir, name, read_split_csv(csv), self.settings)
                for name, csv in self.csvs.items()}

    def prepare_data(self) -> None:
        for cache in self.caches().values():
            cache.build(progress=self.progress)

    def load_splits(self) -> DatasetSplits:
        arrays = {name: cache.open() for name, cache in self.caches().items()}
        return DatasetSplits(
            train=arrays["train"],
            val=arrays["val"],
            tests={name.removeprefix("test/"): a for name, a in arrays.items() if name.startswith("test/")},
            unlabelled=arrays.get("unlabelled"),
        )
