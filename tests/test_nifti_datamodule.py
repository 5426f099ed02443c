"""NIfTI datamodule: batch contract, alignment through every transform, slice cache reuse and invalidation."""

from __future__ import annotations

from unittest import mock

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.base import BATCH_KEYS
from datamodules.nifti import read_split_csv
from datamodules.preprocessing import PreprocessingSettings, VolumeRecord, preprocess_volume
from tests.conftest import LESION, SHAPE, ellipsoid, nifti_datamodule, write_nifti


def test_batches_follow_the_data_contract(tiny_nifti):
    dm = nifti_datamodule(tiny_nifti)
    dm.prepare_data()
    dm.setup()
    assert dm.test_set_names == ["healthy", "lesion"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(BATCH_KEYS)
    b = batch["image"].shape[0]
    assert batch["image"].shape == (b, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == batch["roi"].shape == (b, 1, 32, 32)
    assert batch["label"].dtype == torch.int64 and batch["slice"].dtype == torch.int64
    assert isinstance(batch["subject"], list) and isinstance(batch["subject"][0], str)
    assert float(batch["image"].min()) >= 0.0 and float(batch["image"].max()) <= 1.0
    assert set(torch.unique(batch["roi"]).tolist()) <= {0.0, 1.0}
    lesion = dm.splits.tests["lesion"]
    assert lesion.labels.sum() > 0 and dm.splits.tests["healthy"].labels.sum() == 0
    assert (np.asarray(dm.splits.train.masks) == 0).all()


def _single(tmp_path, image, mask, roi, affine, settings):
    paths = [write_nifti(tmp_path / f"{n}.nii.gz", a, affine) for n, a in (("i", image), ("m", mask), ("r", roi))]
    return preprocess_volume(VolumeRecord("s", *paths), settings)


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_mask_stays_aligned_with_the_lesion_through_every_transform(tmp_path, image_size):
    rng = np.random.default_rng(1)
    roi = ellipsoid(SHAPE, (13, 15, 7))
    mask = np.zeros(SHAPE, np.uint8)
    mask[LESION] = 1
    image = (0.4 + 0.02 * rng.standard_normal(SHAPE)).astype(np.float32) * roi
    image[mask > 0] = 1.0
    settings = PreprocessingSettings(image_size=image_size, intensity_percentiles=(0, 100), min_lesion_pixels=1)
    out = _single(tmp_path, image, mask, roi, np.diag([2.0, 2.0, 3.0, 1.0]), settings)
    lesion_slices = np.flatnonzero(out.masks.reshape(len(out.slices), -1).sum(1))
    assert len(lesion_slices) == LESION[2].stop - LESION[2].start
    for k in lesion_slices:
        m = out.masks[k, 0] > 0
        excess = np.clip(out.images[k, 0] - 0.55, 0, None)  # lesion 1.0, tissue about 0.4 after scaling
        com_excess = (np.argwhere(excess > 0) * excess[excess > 0][:, None]).sum(0) / excess.sum()
        com_mask = np.argwhere(m).mean(0)
        assert np.abs(com_excess - com_mask).max() < 0.5, f"slice {k}: lesion centre {com_excess} vs mask {com_mask}"
        if image_size >= 32:  # no anti-aliasing blur when upsampling: the bright region is the mask
            bright = out.images[k, 0] > 0.7
            iou = (bright & m).sum() / (bright | m).sum()
            assert iou > 0.8, f"slice {k}: IoU {iou:.2f} between bright pixels and the mask"
    assert (out.masks <= out.rois).all()


def test_orientation_is_canonical(tmp_path):
    """The same anatomy stored with a flipped (LPS) affine gives the same slices as its RAS version."""
    rng = np.random.default_rng(2)
    roi = ellipsoid(SHAPE, (13, 15, 7))
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:9, 5:12, 2:5] = 1
    mask *= roi
    image = rng.random(SHAPE).astype(np.float32) * roi
    settings = PreprocessingSettings(image_size=32, min_lesion_pixels=1)
    ras = _single(tmp_path / "ras", image, mask, roi, np.eye(4), settings)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = _single(tmp_path / "lps", image[::-1, ::-1].copy(), mask[::-1, ::-1].copy(), roi[::-1, ::-1].copy(),
                  flip, settings)
    np.testing.assert_allclose(ras.images, lps.images, atol=1e-6)
    np.testing.assert_array_equal(ras.masks, lps.masks)


def test_percentile_normalisation_inside_roi(tmp_path):
    roi = ellipsoid(SHAPE, (13, 15, 7))
    image = np.where(roi > 0, np.linspace(100, 200, roi.size).reshape(SHAPE), 5000.0).astype(np.float32)
    settings = PreprocessingSettings(image_size=32, intensity_percentiles=(0, 100), crop_to_roi=False)
    out = _single(tmp_path, image, np.zeros(SHAPE, np.uint8), roi, np.eye(4), settings)
    assert out.images.max() <= 1.0 and out.images.min() >= 0.0
    assert (out.images[out.rois == 0] == 0).all()  # background (5000) zeroed, not saturating the scale
    assert out.images[out.rois > 0].max() > 0.9


def test_second_epoch_opens_no_nifti_file(tiny_nifti):
    dm = nifti_datamodule(tiny_nifti)
    dm.prepare_data()
    dm.setup()
    with mock.patch.object(nib, "load", side_effect=AssertionError("a NIfTI file was opened during an epoch")) as load:
        for _ in range(2):
            for loader in [dm.train_dataloader(), dm.val_dataloader(), *dm.test_dataloader()]:
                for _batch in loader:
                    pass
        assert load.call_count == 0
    # a second datamodule with the same settings reuses the caches without reading any volume
    with mock.patch.object(nib, "load", side_effect=AssertionError("cache was rebuilt")):
        again = nifti_datamodule(tiny_nifti)
        again.prepare_data()
        again.setup()
    assert len(again.splits.train) == len(dm.splits.train)


def test_cache_invalidated_when_settings_or_files_change(tiny_nifti):
    dm = nifti_datamodule(tiny_nifti)
    base = {name: cache.path for name, cache in dm.caches().items()}
    dm.prepare_data()
    changed = nifti_datamodule(tiny_nifti, image_size=16).caches()
    assert all(changed[n].path != base[n] for n in base)
    changed = nifti_datamodule(tiny_nifti, intensity_percentiles=(2.0, 98.0)).caches()
    assert all(changed[n].path != base[n] for n in base)
    # rewriting one training volume changes only the train cache key
    record = read_split_csv(tiny_nifti["csvs"]["train"])[0]
    data = nib.load(record.image).get_fdata().astype(np.float32)
    write_nifti(record.image, data * 2)
    after = nifti_datamodule(tiny_nifti).caches()
    assert after["train"].path != base["train"] and after["val"].path == base["val"]
    assert not after["train"].is_built() and after["val"].is_built()


def test_split_csv_paths_relative_to_csv(tiny_nifti):
    records = read_split_csv(tiny_nifti["csvs"]["test_lesion"])
    assert [r.subject for r in records] == ["tl0", "tl1"]
    assert all(r.image.is_absolute() and r.image.is_file() for r in records)


def test_subjects_in_two_splits_are_rejected(tiny_nifti):
    from datamodules.errors import DataError

    csvs = tiny_nifti["csvs"]
    table = pd.read_csv(csvs["train"])
    pd.concat([table, pd.read_csv(csvs["val"]).iloc[:1]]).to_csv(csvs["train"], index=False)
    dm = nifti_datamodule(tiny_nifti)
    with pytest.raises(DataError, match="va0"):
        dm.setup()
