"""Split-CSV features for real releases: modality columns, label maps, PNG slices, HU windows, foreground rois,
lesion-free training slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datamodules.base import DatasetSplits, SliceArrays
from datamodules.errors import DataError
from datamodules.nifti import NiftiDataModule, read_split_csv
from datamodules.preprocessing import PreprocessingSettings, VolumeRecord, load_volume, preprocess_volume
from datamodules.slice_cache import SliceCache
from tests.releases import SHAPE, blob, brain, write_nifti, write_png

FULL = {"crop_to_roi": False, "min_roi_fraction": 0.0, "min_lesion_pixels": 1, "image_size": max(SHAPE[:2])}


def test_png_slice_keeps_its_displayed_orientation(tmp_path):
    picture = np.zeros((20, 30), np.uint8)  # 20 rows, 30 columns
    picture[2:5, 20:27] = 255  # a bright bar near the top right
    mask = np.zeros_like(picture)
    mask[2:5, 20:27] = 255  # 8-bit mask: 0 / 255
    record = VolumeRecord("p", write_png(tmp_path / "i.png", picture), write_png(tmp_path / "m.png", mask))
    settings = PreprocessingSettings(image_size=30, intensity_window=(0.0, 255.0), crop_to_roi=False,
                                     min_roi_fraction=0.0, min_lesion_pixels=1)
    out = preprocess_volume(record, settings)
    assert out.images.shape == (1, 1, 30, 30) and out.slices.tolist() == [0]
    image, lesion = out.images[0, 0], out.masks[0, 0] > 0
    # padded to a square by 5 rows above and below; otherwise the picture as displayed, values / 255
    np.testing.assert_allclose(image[5:25], picture / 255.0, atol=1e-6)
    assert np.array_equal(lesion[5:25], picture > 0) and out.labels.tolist() == [1]


def test_colour_png_and_grey_rgb(tmp_path):
    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8)[..., None], 3, axis=2)
    data = load_volume(VolumeRecord("g", write_png(tmp_path / "g.png", grey)))
    assert data["image"].shape == (1, 8, 8, 1)
    colour = grey.copy()
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match="colour image"):
        load_volume(VolumeRecord("c", write_png(tmp_path / "c.png", colour)))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"bad\.png"):
        load_volume(VolumeRecord("b", tmp_path / "bad.png"))


def test_label_maps_become_masks_and_rois(tmp_path):
    rng = np.random.default_rng(0)
    image = brain(rng)
    seg = np.zeros(SHAPE, np.uint8)
    seg[blob(SHAPE, (12, 14, 10), 6)] = 1  # "liver"
    seg[blob(SHAPE, (12, 14, 10), 3)] = 2  # "tumour" inside it
    paths = [write_nifti(tmp_path / f"{n}.nii.gz", a) for n, a in (("i", image), ("s", seg))]
    record = VolumeRecord("s", paths[0], paths[1], paths[1], mask_labels=(2,), roi_labels=(1, 2))
    data = load_volume(record)
    assert int(data["mask"].sum()) == int((seg == 2).sum()) and int(data["roi"].sum()) == int((seg > 0).sum())
    with pytest.raises(DataError, match="not binary"):  # the label map without labels is refused
        load_volume(VolumeRecord("s", paths[0], paths[1]))
    # the datamodule-level grouping overrides the record's
    override = load_volume(record, PreprocessingSettings(mask_labels=(1, 2)))
    assert int(override["mask"].sum()) == int((seg > 0).sum())


def test_intensity_window_maps_hounsfield_units(tmp_path):
    ct = np.full(SHAPE, -1000.0, np.float32)  # air
    ct[blob(SHAPE, (12, 14, 10), 8)] = 50.0  # soft tissue
    ct[blob(SHAPE, (12, 14, 10), 3)] = 400.0  # above the window
    record = VolumeRecord("ct", write_nifti(tmp_path / "ct.nii.gz", ct))
    out = preprocess_volume(record, PreprocessingSettings(intensity_window=(-100.0, 200.0), zero_outside_roi=False,
                                                          **FULL))
    values = set(np.round(np.unique(out.images), 4).tolist())
    assert values <= {0.0, 0.5, 1.0} and {0.0, 0.5, 1.0} <= values  # (50 + 100) / 300 = 0.5, clipped at both ends


def test_roi_from_foreground_fills_holes(tmp_path):
    rng = np.random.default_rng(1)
    image = brain(rng)
    image[blob(SHAPE, (12, 14, 10), 2)] = 0.0  # a dark "ventricle" inside the brain: must stay in the roi
    record = VolumeRecord("f", write_nifti(tmp_path / "f.nii.gz", image))
    data = load_volume(record, PreprocessingSettings(roi_from_foreground=True))
    roi = data["roi"][0].numpy() > 0
    assert roi.sum() == (image > 0).sum() + blob(SHAPE, (12, 14, 10), 2).sum()
    assert load_volume(record)["roi"].min() == 1  # default: the whole volume
    picture = np.zeros((16, 16), np.uint8)
    picture[2:14, 2:14] = 200
    picture[6:9, 6:9] = 0  # a dark hole inside a 2D slice
    data = load_volume(VolumeRecord("p", write_png(tmp_path / "p.png", picture)),
                       PreprocessingSettings(roi_from_foreground=True))
    assert int(data["roi"].sum()) == 12 * 12


def test_modality_columns_and_label_columns(tmp_path):
    rng = np.random.default_rng(2)
    t1 = write_nifti(tmp_path / "t1.nii.gz", brain(rng))
    t2 = write_nifti(tmp_path / "t2.nii.gz", brain(rng))
    csv = tmp_path / "split.csv"
    pd.DataFrame([{"subject": "a", "image_t1": t1.name, "image_t2": t2.name, "mask": t1.name,
                   "mask_labels": "1 2 4"}]).to_csv(csv, index=False)
    (record,) = read_split_csv(csv, "t2")
    assert record.image == t2 and record.mask_labels == (1, 2, 4) and record.roi_labels is None
    with pytest.raises(DataError, match=r"no 'image_flair' column; its modalities are \['t1', 't2'\]"):
        read_split_csv(csv, "flair")
    with pytest.raises(DataError, match="no 'image' column"):
        read_split_csv(csv)
    pd.DataFrame([{"image": t1.name, "mask_labels": "one"}]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="not a list of integer label values"):
        read_split_csv(csv)
    with pytest.raises(DataError, match="prepare DATASET --root"):
        read_split_csv(tmp_path / "missing.csv")


def test_lesion_free_margin_drops_lesion_slices_and_neighbours(tmp_path):
    rng = np.random.default_rng(3)
    image = brain(rng)
    mask = np.zeros(SHAPE, np.uint8)
    mask[10:14, 12:16, 8:11] = 1  # slices 8, 9, 10
    record = VolumeRecord("l", write_nifti(tmp_path / "i.nii.gz", image), write_nifti(tmp_path / "m.nii.gz", mask))
    settings = PreprocessingSettings(**FULL)
    for margin, expected in ((None, set(range(20))), (0, set(range(20)) - {8, 9, 10}),
                             (2, set(range(20)) - set(range(6, 13)))):
        cache = SliceCache(tmp_path / "cache", "train", [record], settings, lesion_free_margin=margin)
        arrays = cache.open()
        assert set(arrays.slices.tolist()) == expected, margin
        assert cache.dropped_for_lesions() == 20 - len(expected)
    with pytest.raises(DataError, match="dropped for lesions"):  # a volume that is lesion everywhere
        mask[:] = 1
        write_nifti(tmp_path / "all.nii.gz", mask)
        SliceCache(tmp_path / "cache", "train", [VolumeRecord("l", record.image, tmp_path / "all.nii.gz")],
                   settings, lesion_free_margin=0).open()


def test_test_sets_may_share_subjects_but_not_with_training():
    def arrays(*subjects: str) -> SliceArrays:
        n = len(subjects)
        return SliceArrays(np.zeros((n, 1, 4, 4), np.float32), np.zeros((n, 1, 4, 4), np.uint8),
                           np.ones((n, 1, 4, 4), np.uint8), np.zeros(n, np.int64), np.asarray(subjects),
                           np.zeros(n, np.int64))

    DatasetSplits(arrays("a"), arrays("b"), {"edema": arrays("x"), "mass": arrays("x", "y")})
    with pytest.raises(DataError, match="'x' appears in split 'train' and in 'test/mass'"):
        DatasetSplits(arrays("x"), arrays("b"), {"mass": arrays("x")})


def test_datamodule_default_keeps_synthetic_caches(tmp_path):
    """New settings at their defaults leave cache keys (and so existing caches) unchanged."""
    assert set(PreprocessingSettings().fingerprint()) == {
        "image_size", "intensity_percentiles", "zero_outside_roi", "crop_to_roi", "slice_range",
        "min_roi_fraction", "min_lesion_pixels"}
    dm = NiftiDataModule(train_csv="a.csv", val_csv="b.csv", test_csvs={"t": "c.csv"}, intensity_window=[-1, 1],
                         mask_labels=[2])
    assert dm.settings.intensity_window == (-1, 1) and dm.settings.mask_labels == (2,)
