"""Bad input gives a clear error that names the file (or key) and what is wrong."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from datamodules.errors import DataError
from tests.conftest import SHAPE, nifti_datamodule, write_nifti


def _row(tiny, split="test_lesion"):
    table = pd.read_csv(tiny["csvs"][split])
    return table, tiny["root"] / table.loc[0, "image"], tiny["root"] / table.loc[0, "mask"]


def _build(tiny):
    dm = nifti_datamodule(tiny)
    dm.prepare_data()
    dm.setup()


def test_missing_file_listed_in_csv(tiny_nifti):
    _, image, _ = _row(tiny_nifti)
    image.unlink()
    with pytest.raises(DataError, match=r"not found:[\s\S]*" + image.name):
        _build(tiny_nifti)


def test_corrupt_nifti(tiny_nifti):
    _, image, _ = _row(tiny_nifti)
    image.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    with pytest.raises(DataError, match=f"cannot read image file .*{image.name}"):
        _build(tiny_nifti)


def test_truncated_nifti(tiny_nifti):
    _, image, _ = _row(tiny_nifti)
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(DataError, match=image.name):
        _build(tiny_nifti)


def test_mask_shape_mismatch(tiny_nifti):
    _, _, mask = _row(tiny_nifti)
    write_nifti(mask, np.zeros((SHAPE[0] + 2, SHAPE[1], SHAPE[2]), np.uint8))
    with pytest.raises(DataError, match=f"mask file .*{mask.name}.* has shape"):
        _build(tiny_nifti)


def test_non_binary_mask(tiny_nifti):
    _, _, mask = _row(tiny_nifti)
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:8, 5:8, 5:8] = 2
    write_nifti(mask, labels)
    with pytest.raises(DataError, match=f"mask file .*{mask.name} is not binary"):
        _build(tiny_nifti)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_voxels(tiny_nifti, bad):
    _, image, _ = _row(tiny_nifti, "train")
    data = np.ones(SHAPE, np.float32)
    data[3, 3, 3] = bad
    write_nifti(image, data)
    with pytest.raises(DataError, match=f"{image.name} contains 1 NaN/Inf voxels"):
        _build(tiny_nifti)


def test_empty_split(tiny_nifti):
    path = tiny_nifti["csvs"]["val"]
    path.write_text("subject,image,mask,roi\n")
    with pytest.raises(DataError, match=f"{path.name} is empty"):
        _build(tiny_nifti)


def test_no_slice_selected_is_an_empty_split(tiny_nifti):
    dm = nifti_datamodule(tiny_nifti, min_roi_fraction=0.99)
    with pytest.raises(DataError, match="no slice passed the selection"):
        dm.prepare_data()


def test_unknown_csv_column(tiny_nifti):
    path = tiny_nifti["csvs"]["val"]
    table = pd.read_csv(path)
    table["modality"] = "t1"
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"unknown column\(s\) \['modality'\]"):
        _build(tiny_nifti)


def test_constant_image(tiny_nifti):
    _, image, _ = _row(tiny_nifti, "train")
    write_nifti(image, np.full(SHAPE, 3.0, np.float32))
    with pytest.raises(DataError, match=f"{image.name}: intensities are constant"):
        _build(tiny_nifti)
