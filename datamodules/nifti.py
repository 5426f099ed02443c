r"""NIfTI / PNG datamodule: split CSVs of volumes -> preprocessed, memory-mapped axial slices.

Split CSV format (one row per subject / volume; paths absolute or relative to the CSV's folder). The split CSVs
that ``run_benchmark.py prepare`` writes for the real-dataset releases follow it too:

===============  ========  ==================================================================================
column           required  meaning
===============  ========  ==================================================================================
image            yes*      the intensity volume (``.nii`` / ``.nii.gz``) or 2D slice (``.png`` / ``.jpg``)
image_<name>     yes*      one column per modality (``image_t1``, ``image_flair`` ...); ``modality`` picks one
mask             no        lesion mask on the image's grid: binary (0/1; 0/255 in PNGs) or a label map
mask_labels      no        label values of ``mask`` that are lesion, space-separated (``1 2 4``); empty = binary
roi              no        evaluation region (brain / organ mask), binary or a label map; empty = none
roi_labels       no        label values of ``roi`` inside the region (LiTS liver: ``1 2``); empty = binary
subject          no        subject id (default: the image file name without extension)
===============  ========  ==================================================================================

\* ``image`` when ``modality`` is null, else ``image_<modality>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from datamodules.base import AnomalyDataModule, DatasetSplits
from datamodules.errors import DataError
from datamodules.preprocessing import PreprocessingSettings, VolumeRecord
from datamodules.slice_cache import SliceCache

CSV_COLUMNS = ("image", "mask", "roi", "subject", "mask_labels", "roi_labels")
MODALITY_PREFIX = "image_"


def default_cache_dir() -> Path:
    """``$NORMBENCH_CACHE_DIR`` or ``~/.cache/normbench/slices``."""
    return Path(os.environ.get("NORMBENCH_CACHE_DIR", Path.home() / ".cache" / "normbench" / "slices"))


def _subject_from_path(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _labels(value: str, csv_path: Path, row_number: int, column: str) -> tuple[int, ...] | None:
    value = value.strip()
    if not value:
        return None
    try:
        return tuple(int(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise DataError(f"split CSV {csv_path}, row {row_number}: {column} {value!r} is not a list of integer label "
                        "values (e.g. '1 2 4')") from None


def read_split_csv(csv_path: str | Path, modality: str | None = None) -> list[VolumeRecord]:
    """Read a split CSV into records, with errors that name the CSV, the row and the column.

    ``modality`` selects the ``image_<modality>`` column as the image (None: the ``image`` column).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"split CSV not found: {csv_path}; for a public dataset, write its split CSVs first with "
                        "`python run_benchmark.py prepare DATASET --root PATH` (README, 'Real datasets')")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"cannot parse split CSV {csv_path}: {error}") from error
    unknown = [c for c in table.columns if c not in CSV_COLUMNS and not c.startswith(MODALITY_PREFIX)]
    if unknown:
        raise DataError(f"split CSV {csv_path} has unknown column(s) {unknown}; allowed: {list(CSV_COLUMNS)} and "
                        f"{MODALITY_PREFIX}<modality>")
    column = "image" if modality is None else MODALITY_PREFIX + modality
    if column not in table.columns:
        offered = sorted(c.removeprefix(MODALITY_PREFIX) for c in table.columns if c.startswith(MODALITY_PREFIX))
        hint = f"; its modalities are {offered} (set the dataset's modality)" if offered else ""
        raise DataError(f"split CSV {csv_path} has no {column!r} column{hint}")
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
        image = resolve(row[column])
        if image is None:
            raise DataError(f"split CSV {csv_path}, row {row_number}: empty {column!r} entry")
        subject = (row.get("subject") or "").strip() or _subject_from_path(row[column])
        if subject in seen:
            raise DataError(f"split CSV {csv_path}, row {row_number}: subject {subject!r} appears twice")
        seen.add(subject)
        records.append(VolumeRecord(
            subject, image, resolve(row.get("mask", "")), resolve(row.get("roi", "")),
            mask_labels=_labels(row.get("mask_labels", ""), csv_path, row_number, "mask_labels"),
            roi_labels=_labels(row.get("roi_labels", ""), csv_path, row_number, "roi_labels"),
        ))
    return records


class NiftiDataModule(AnomalyDataModule):
    """Slices of NIfTI volumes listed in split CSVs, preprocessed once into a memory-mapped cache.

    Args:
        train_csv: healthy training volumes.
        val_csv: healthy validation volumes (early stopping, threshold calibration).
        test_csvs: test set name -> CSV, e.g. ``{"healthy": ..., "tumor": ...}``.
        unlabelled_csv: optional pool that may contain anomalies (masks unused), never overlapping the test sets.
        cache_dir: where slice caches live (default ``$NORMBENCH_CACHE_DIR`` or ``~/.cache/normbench/slices``).
        modality: which ``image_<modality>`` column of the CSVs is the image (None: the ``image`` column).
        lesion_free_margin: train and val keep only slices without lesion pixels and at least this many slices
            away from one, so healthy slices of pathological volumes can train (BraTS, LiTS); null keeps all.
        image_size, intensity_percentiles, intensity_window, zero_outside_roi, crop_to_roi, roi_from_foreground,
        mask_labels, slice_range, min_roi_fraction, min_lesion_pixels: see
        :class:`datamodules.preprocessing.PreprocessingSettings`.
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
        modality: str | None = None,
        intensity_window: tuple[float, float] | None = None,
        roi_from_foreground: bool = False,
        mask_labels: list[int] | None = None,
        lesion_free_margin: int | None = 0,
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
            intensity_window=tuple(intensity_window) if intensity_window is not None else None,
            roi_from_foreground=roi_from_foreground,
            mask_labels=tuple(mask_labels) if mask_labels is not None else None,
        )
        self.modality = modality
        self.lesion_free_margin = lesion_free_margin
        self.progress = progress

    def caches(self) -> dict[str, SliceCache]:
        """One slice cache per split (cheap: hashes file metadata, reads no volume)."""
        return {name: SliceCache(self.cache_dir, name, read_split_csv(csv, self.modality), self.settings,
                                 self.lesion_free_margin if name in ("train", "val") else None)
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
