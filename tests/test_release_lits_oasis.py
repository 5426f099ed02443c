"""LiTS (liver CT) and OASIS PNG slice adapters: miniature releases in the official layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark.cli import main
from benchmark.config import load_component
from datamodules.nifti import NiftiDataModule
from datamodules.releases import release_class
from datamodules.releases.base import ReleaseError, prepare
from tests.releases import SHAPE, blob, snapshot, write_nifti, write_png

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"


def datamodule_from_yaml(name: str, out: Path, cache: Path, image_size: int, **overrides) -> NiftiDataModule:
    """The dataset config's datamodule, reading the prepared CSVs in ``out``."""
    args = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["init_args"]
    args["train_csv"], args["val_csv"] = str(out / "train.csv"), str(out / "val.csv")
    args["test_csvs"] = {k: str(out / Path(v).name) for k, v in args["test_csvs"].items()}
    args.update(cache_dir=str(cache), image_size=image_size, progress=False, **overrides)
    return NiftiDataModule(**args)


# ------------------------------------------------------------------------------------------------------- LiTS
LIVER = (slice(4, 20), slice(6, 22), slice(4, 16))  # a 16 x 16 x 12 box: cropping to it gives 16 px slices
VESSEL = (6, 8)  # an (x, y) line through the liver at 500 HU, above the window
HU = {"air": -1000, "body": 0, "liver": 50, "tumour": 140, "vessel": 500}
WINDOW = (-100, 200)
HEALTHY_IDS = (1, 30)


def lits_volume(number: int) -> tuple[np.ndarray, np.ndarray]:
    """(CT in HU as int16, segmentation uint8); even-numbered volumes hold a tumour ball at z 7..13."""
    ct = np.full(SHAPE, HU["air"], np.int16)
    ct[2:22, 2:26, 1:19] = HU["body"]
    seg = np.zeros(SHAPE, np.uint8)
    seg[LIVER] = 1
    ct[LIVER] = HU["liver"]
    ct[VESSEL[0], VESSEL[1], LIVER[2]] = HU["vessel"]
    if number not in HEALTHY_IDS:
        tumour = blob(SHAPE, (8 + number % 3, 14, 10), 3)
        seg[tumour] = 2
        ct[tumour] = HU["tumour"]
    return ct, seg


def lits_release(root: Path) -> Path:
    """Volumes 0-2 in Training Batch 1, 28-30 in Training Batch 2 (1 and 30 without tumour); volume 2 as .nii.gz;
    volume 29 holds volume 28's image stored with a flipped x axis (negative affine); two challenge test volumes."""
    for number in (0, 1, 2, 28, 29, 30):
        folder = root / ("Training Batch 1" if number < 28 else "Training Batch 2")
        suffix = ".nii.gz" if number == 2 else ".nii"
        ct, seg = lits_volume(28 if number == 29 else number)
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        if number == 29:
            ct, seg = np.flip(ct, 0).copy(), np.flip(seg, 0).copy()
            affine[0, 0], affine[0, 3] = -0.8, 0.8 * (SHAPE[0] - 1)
        write_nifti(folder / f"volume-{number}{suffix}", ct, affine)
        write_nifti(folder / f"segmentation-{number}{suffix}", seg, affine)
    for number in (0, 1):
        write_nifti(root / f"test-volume-{number}.nii", lits_volume(0)[0])
    (root / "README.txt").write_text("ignored\n")
    return root


def test_lits_scan_groups_pairs_and_ignores_test_volumes(tmp_path):
    release = release_class("lits")(lits_release(tmp_path / "LiTS"))
    subjects, problems = release.scan()
    assert problems == []
    by_id = {s.id: s for s in subjects}
    assert sorted(by_id) == ["lits-0", "lits-1", "lits-2", "lits-28", "lits-29", "lits-30"]
    assert {i: s.group for i, s in by_id.items()} == {"lits-0": "tumor", "lits-1": "healthy", "lits-2": "tumor",
                                                      "lits-28": "tumor", "lits-29": "tumor", "lits-30": "healthy"}
    two = by_id["lits-2"]
    assert two.files["image_ct"].name == "volume-2.nii.gz" and two.files["mask"] == two.files["roi"]
    assert two.files["mask"].name == "segmentation-2.nii.gz" and two.files["mask"].parent.name == "Training Batch 1"
    assert two.mask_labels == (2,) and two.roi_labels == (1, 2) and two.split is None
    assert release.options() == {"modalities": ["ct"], "test_volumes_ignored": 2}


def test_lits_prepare_through_the_cli_is_idempotent(tmp_path):
    root, out = lits_release(tmp_path / "LiTS"), tmp_path / "prepared"
    assert main(["prepare", "lits", "--root", str(root), "--out", str(out)]) == 0
    tables = {p.stem: pd.read_csv(p, dtype=str, keep_default_na=False) for p in out.glob("*.csv")}
    # healthy 2 -> train 2 (0.8 / 0.1 / 0.1 of two); tumour 4 -> train 1, val 1, test 2 (0.5 / 0.1 / 0.4)
    assert {k: len(v) for k, v in tables.items()} == {"train": 3, "val": 1, "test_tumor": 2}
    assert set(tables["train"]["subject"]) >= {"lits-1", "lits-30"}
    assert not set(tables["test_tumor"]["subject"]) & {"lits-1", "lits-30"}
    row = tables["test_tumor"].iloc[0]
    assert list(tables["test_tumor"].columns) == ["subject", "image_ct", "mask", "mask_labels", "roi", "roi_labels"]
    assert row["mask"] == row["roi"] and row["mask_labels"] == "2" and row["roi_labels"] == "1 2"
    assert Path(row["image_ct"]).name.startswith("volume-") and Path(row["image_ct"]).is_absolute()
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["options"] == {"modalities": ["ct"], "test_volumes_ignored": 2}
    assert manifest["groups"]["healthy"] == ["lits-1", "lits-30"] and manifest["pathology_split"]["test"] == 0.4

    before = snapshot(out)
    assert main(["prepare", "lits", "--root", str(root), "--out", str(out)]) == 0
    assert snapshot(out) == before


def test_lits_batches_from_the_config_window_hu_and_align_the_tumour(tmp_path):
    root, out = lits_release(tmp_path / "LiTS"), tmp_path / "prepared"
    assert main(["prepare", "lits", "--root", str(root), "--out", str(out),
                 "--healthy-split", "train=0.5,test=0.5"]) == 0
    dm = datamodule_from_yaml("lits", out, tmp_path / "cache", image_size=16, min_lesion_pixels=1)
    assert dm.settings.intensity_window == WINDOW and dm.settings.crop_to_roi and dm.modality == "ct"
    dm.prepare_data()
    dm.setup()
    test = dm.splits.tests["tumor"]
    images, masks, rois = (np.asarray(a)[:, 0] for a in (test.images, test.masks, test.rois))
    assert len(test) == 2 * 12  # two volumes, the 12 slices of the liver box (cropped to it: 16 x 16 each)
    assert (rois == 1).all()  # roi = liver incl. tumour, and the crop is exactly the liver
    tumour_voxels = int((lits_volume(0)[1] == 2).sum())
    assert masks.sum() == 2 * tumour_voxels and (masks <= rois).all()
    scale = lambda hu: (hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])  # noqa: E731
    assert np.allclose(images[masks == 1], scale(HU["tumour"]), atol=1e-5)  # 140 HU -> 0.8, under the mask
    liver = images[masks == 0]
    assert np.allclose(np.unique(liver.round(5)), [scale(HU["liver"]), 1.0])  # 50 HU -> 0.5; 500 HU clipped to 1
    assert (liver == 1.0).sum() == 2 * 12  # the vessel line, one pixel per slice
    assert test.labels.sum() == 2 * 7  # tumour on slices z 7..13

    healthy = dm.splits.tests["healthy"]
    assert len(healthy) == 12 and np.asarray(healthy.masks).sum() == 0 and healthy.labels.sum() == 0
    # train: one healthy liver (12 slices) + the lesion-free slices of one tumour patient (12 - 7); val: 5
    assert len(dm.splits.train) == 12 + 5 and len(dm.splits.val) == 5
    assert np.asarray(dm.splits.train.masks).sum() == 0 and np.asarray(dm.splits.val.masks).sum() == 0
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape[1:] == (1, 16, 16) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}


def test_lits_flipped_affine_is_reoriented_onto_the_same_slices(tmp_path):
    root, out = lits_release(tmp_path / "LiTS"), tmp_path / "prepared"
    prepare(release_class("lits")(root), out, pathology_split="test=1", healthy_split="test=1")
    test_csv = str(out / "test_tumor.csv")
    dm = datamodule_from_yaml("lits", out, tmp_path / "cache", image_size=16, train_csv=test_csv, val_csv=test_csv)
    cache = dm.caches()["test/tumor"]  # only the test set is read
    cache.build(progress=False)
    arrays = cache.open()
    subjects = np.asarray(arrays.subjects)
    straight, flipped = (subjects == "lits-28"), (subjects == "lits-29")
    assert straight.sum() == flipped.sum() == 12
    stored = [np.asarray(nib.load(root / "Training Batch 2" / f"volume-{n}.nii").dataobj) for n in (28, 29)]
    assert not np.array_equal(*stored) and np.array_equal(stored[0], stored[1][::-1])  # mirrored arrays ...
    for name in ("images", "masks", "rois"):  # ... give the same slices once reoriented to RAS
        values = np.asarray(getattr(arrays, name))
        assert np.array_equal(values[straight], values[flipped]), name
    images, masks = np.asarray(arrays.images)[flipped], np.asarray(arrays.masks)[flipped]
    assert masks.sum() > 0 and np.allclose(images[masks == 1], 0.8, atol=1e-5)  # still under the bright tumour
    assert not np.array_equal(masks, masks[..., ::-1])  # the tumour is off-centre: a wrong flip would show


def test_lits_broken_release_gives_one_clear_report(tmp_path):
    root = lits_release(tmp_path / "LiTS")
    batch = root / "Training Batch 2"
    ct, seg = lits_volume(40)
    write_nifti(batch / "volume-40.nii", ct)  # no segmentation
    write_nifti(batch / "segmentation-41.nii", seg)  # no volume
    bad = seg.copy()
    bad[0, 0, 0] = 3  # 3 is not a LiTS label
    write_nifti(batch / "volume-42.nii", ct)
    write_nifti(batch / "segmentation-42.nii", bad)
    write_nifti(batch / "volume-43.nii", ct)
    write_nifti(batch / "segmentation-43.nii", np.zeros((10, 10, 10), np.uint8))
    write_nifti(batch / "volume-44.nii", ct)
    write_nifti(batch / "segmentation-44.nii", seg)
    (batch / "volume-44.nii").write_bytes(b"not a nifti file")
    write_nifti(batch / "volume-45.nii", ct)
    (batch / "segmentation-45.nii").write_bytes(b"not a nifti file either")
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("lits")(root), out)
    report = str(error.value)
    for expected in ("[lits-40]", "volume-40 has no segmentation-40", "[lits-41]", "missing ct image",
                     "[lits-42]", "mask has unexpected label value(s) [3.0]", "[lits-43]", "shape (10, 10, 10)",
                     "[lits-44]", "unreadable image_ct", "[lits-45]", "unreadable segmentation",
                     "No split CSV was written", "--skip-invalid"):
        assert expected in report, expected
    assert not list(out.glob("*.csv"))
    assert main(["prepare", "lits", "--root", str(root), "--out", str(out)]) == 2

    assert main(["prepare", "lits", "--root", str(root), "--out", str(out), "--skip-invalid",
                 "--pathology-split", "test=1", "--healthy-split", "test=1"]) == 0
    manifest = json.loads((out / "prepare.json").read_text())
    assert sorted(manifest["skipped"]) == [f"lits-4{i}" for i in range(6)]
    kept = set(pd.read_csv(out / "test_tumor.csv")["subject"]) | set(pd.read_csv(out / "test_healthy.csv")["subject"])
    assert kept == {"lits-0", "lits-1", "lits-2", "lits-28", "lits-29", "lits-30"}

    # a NIfTI file that is no LiTS volume cannot be placed: it stops prepare even with --skip-invalid
    write_nifti(root / "liver_3.nii.gz", ct)
    with pytest.raises(ReleaseError, match=r"liver_3\.nii\.gz: unrecognised NIfTI file"):
        prepare(release_class("lits")(root), out, skip_invalid=True)


# ------------------------------------------------------------------------------------------------------ OASIS
SIDE = 32
SPLIT_CASES = {"train": (1, 2, 3), "validate": (4, 5, 6), "test": (7, 8, 9)}
TISSUE_GREY = {0: 0, 85: 40, 170: 110, 255: 200}  # segmentation value -> image grey value (background, CSF, GM, WM)


def oasis_slice(case: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, segmentation) uint8 32 x 32: nested tissue ellipses, off-centre, varying with case and slice."""
    rows, cols = np.mgrid[:SIDE, :SIDE]
    seg = np.zeros((SIDE, SIDE), np.uint8)
    for value, radius in ((85, 12), (170, 9), (255, 5)):
        seg[((rows - 14) / (radius + index % 2)) ** 2 + ((cols - 16) / radius) ** 2 <= 1] = value
    image = np.vectorize(TISSUE_GREY.get)(seg).astype(np.uint8)
    image[seg > 0] += np.uint8(case + 3 * index)
    image[2:4, 2:6] = 30  # an asymmetric top-left marker outside the brain: shows the orientation
    return image, seg


def oasis_release(root: Path, cases: dict[str, tuple[int, ...]] = SPLIT_CASES) -> Path:
    for word, numbers in cases.items():
        for case in numbers:
            for index in range(3):
                image, seg = oasis_slice(case, index)
                write_png(root / f"keras_png_slices_{word}" / f"case_{case:03d}_slice_{index}.nii.png", image)
                write_png(root / f"keras_png_slices_seg_{word}" / f"seg_{case:03d}_slice_{index}.nii.png", seg)
    return root


def test_oasis_prepare_keeps_the_official_splits_and_is_idempotent(tmp_path):
    root = oasis_release(tmp_path / "download" / "keras_png_slices_data")
    (tmp_path / "download" / "readme.txt").write_text("ignored\n")
    out = tmp_path / "prepared"
    assert main(["prepare", "oasis", "--root", str(tmp_path / "download"), "--out", str(out)]) == 0
    tables = {p.stem: pd.read_csv(p, dtype=str, keep_default_na=False) for p in out.glob("*.csv")}
    assert {k: len(v) for k, v in tables.items()} == {"train": 9, "val": 9, "test_healthy": 9}
    assert list(tables["train"].columns) == ["subject", "image_t1", "roi", "roi_labels"]  # no lesion mask
    row = tables["val"].iloc[0]
    assert row["subject"] == "case_004_slice_0" and row["roi_labels"] == "85 170 255"
    assert Path(row["image_t1"]).name == "case_004_slice_0.nii.png"
    assert Path(row["roi"]).parent.name == "keras_png_slices_seg_validate"
    assert Path(row["roi"]).name == "seg_004_slice_0.nii.png"
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["subjects"]["train"] == ["case_001", "case_002", "case_003"]  # split unit: the case
    assert manifest["subjects"]["test"] == ["case_007", "case_008", "case_009"]
    assert manifest["options"] == {"modalities": ["t1"], "segmentations": True}

    before = snapshot(out)
    assert main(["prepare", "oasis", "--root", str(tmp_path / "download"), "--out", str(out)]) == 0
    assert snapshot(out) == before
    assert main(["prepare", "oasis", "--root", str(root), "--out", str(out)]) == 0  # the inner folder: same CSVs
    after = snapshot(out)
    assert {name: before[name] for name in after if name.endswith(".csv")} == {
        name: state for name, state in after.items() if name.endswith(".csv")}


def test_oasis_batches_from_the_config_match_the_pngs(tmp_path):
    root, out = oasis_release(tmp_path / "keras_png_slices_data"), tmp_path / "prepared"
    prepare(release_class("oasis")(root), out)
    dm = datamodule_from_yaml("oasis", out, tmp_path / "cache", image_size=SIDE)
    assert dm.settings.intensity_window == (0, 255) and dm.modality == "t1" and not dm.settings.crop_to_roi
    dm.prepare_data()
    dm.setup()
    assert (len(dm.splits.train), len(dm.splits.val)) == (9, 9) and set(dm.splits.tests) == {"healthy"}
    test = dm.splits.tests["healthy"]
    subjects = list(test.subjects)
    assert len(subjects) == 9 and test.labels.sum() == 0
    for case in SPLIT_CASES["test"]:
        for index in range(3):
            k = subjects.index(f"case_{case:03d}_slice_{index}")
            image, seg = oasis_slice(case, index)
            # 32 px kept as is (no crop, no resize): value / 255, displayed orientation, roi from tissue labels
            assert np.allclose(np.asarray(test.images)[k, 0], image / 255.0, atol=1e-6)
            assert np.array_equal(np.asarray(test.rois)[k, 0], (seg > 0).astype(np.uint8))
    assert np.asarray(test.rois).sum() == sum((oasis_slice(c, i)[1] > 0).sum() for c in (7, 8, 9) for i in range(3))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, SIDE, SIDE) and float(batch["image"].max()) <= 1.0


def test_oasis_without_segmentations_and_empty_segmentations(tmp_path):
    root, out = oasis_release(tmp_path / "keras_png_slices_data"), tmp_path / "prepared"
    assert main(["prepare", "oasis", "--root", str(root), "--out", str(out), "--set", "segmentations=false"]) == 0
    assert list(pd.read_csv(out / "train.csv").columns) == ["subject", "image_t1"]
    options = json.loads((out / "prepare.json").read_text())["options"]
    assert options == {"modalities": ["t1"], "segmentations": False, "segmentations_ignored": 27}
    assert main(["prepare", "oasis", "--root", str(root), "--out", str(out), "--set", "segmentations=maybe"]) == 2

    shutil.rmtree(root / "keras_png_slices_seg_train")  # one problem for the folder, not one per slice
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("oasis")(root), out)
    assert "keras_png_slices_train: no keras_png_slices_seg_train folder beside it" in str(error.value)
    assert "problems: 1\n" in str(error.value)
    oasis_release(root, {"train": SPLIT_CASES["train"]})

    write_png(root / "keras_png_slices_seg_test" / "seg_008_slice_2.nii.png", np.zeros((SIDE, SIDE)))  # no brain
    prepare(release_class("oasis")(root), out)
    assert "case_008_slice_2" not in set(pd.read_csv(out / "test_healthy.csv")["subject"])
    assert len(pd.read_csv(out / "test_healthy.csv")) == 8
    options = json.loads((out / "prepare.json").read_text())["options"]
    assert options["empty_segmentations_left_out"] == ["case_008_slice_2"]


def test_oasis_case_in_two_split_folders(tmp_path):
    root = oasis_release(tmp_path / "keras_png_slices_data")
    for index in (0, 1):  # case_002 also has slices in the validation folder
        image, seg = oasis_slice(2, index + 5)
        write_png(root / "keras_png_slices_validate" / f"case_002_slice_{index + 5}.nii.png", image)
        write_png(root / "keras_png_slices_seg_validate" / f"seg_002_slice_{index + 5}.nii.png", seg)
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("oasis")(root), out)
    report = str(error.value)
    assert "[case_002]: case found in several official split folders (keras_png_slices_train, " \
           "keras_png_slices_validate)" in report
    assert main(["prepare", "oasis", "--root", str(root), "--out", str(out)]) == 2
    result = prepare(release_class("oasis")(root), out, skip_invalid=True)
    assert sorted(result.skipped) == ["case_002"] and result.counts == {"train": 6, "val": 9, "test_healthy": 9}
    assert not pd.read_csv(out / "train.csv")["subject"].str.startswith("case_002").any()


def test_oasis_broken_release_gives_one_clear_report(tmp_path):
    root = oasis_release(tmp_path / "keras_png_slices_data")
    (root / "keras_png_slices_seg_validate" / "seg_004_slice_1.nii.png").unlink()  # slice without segmentation
    bad = oasis_slice(5, 0)[1]
    bad[0, 0] = 3  # not a tissue value
    write_png(root / "keras_png_slices_seg_validate" / "seg_005_slice_0.nii.png", bad)
    write_png(root / "keras_png_slices_seg_validate" / "seg_006_slice_7.nii.png", bad)  # no image
    write_png(root / "keras_png_slices_seg_test" / "seg_007_slice_2.nii.png", np.full((16, 16), 85))  # shape
    (root / "keras_png_slices_test" / "case_008_slice_1.nii.png").write_bytes(b"not a png")
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("oasis")(root), out)
    report = str(error.value)
    for expected in ("[case_004]", "case_004_slice_1.nii.png: slice without its segmentation",
                     "[case_005_slice_0]", "roi has unexpected label value(s) [3.0]",
                     "[case_006]", "segmentation without its image case_006_slice_7",
                     "[case_007_slice_2]", "roi has shape (16, 16)", "[case_008_slice_1]", "unreadable image_t1",
                     "No split CSV was written"):
        assert expected in report, expected
    assert main(["prepare", "oasis", "--root", str(root), "--out", str(out)]) == 2
    assert main(["prepare", "oasis", "--root", str(root), "--out", str(out), "--skip-invalid"]) == 0
    manifest = json.loads((out / "prepare.json").read_text())
    assert sorted(manifest["skipped"]) == [f"case_00{i}" for i in range(4, 9)]  # the whole case goes
    assert manifest["csvs"] == {"train.csv": 9, "test_healthy.csv": 3}  # validate lost every case
    assert set(pd.read_csv(out / "test_healthy.csv")["subject"].str[:8]) == {"case_009"}

    # a stray PNG or a second copy of a split folder cannot be placed: prepare stops even with --skip-invalid
    shutil.copytree(root / "keras_png_slices_train", tmp_path / "copy" / "keras_png_slices_train")
    (tmp_path / "stray.png").write_bytes((root / "keras_png_slices_train" / "case_001_slice_0.nii.png").read_bytes())
    with pytest.raises(ReleaseError, match="two keras_png_slices_train folders") as error:
        prepare(release_class("oasis")(tmp_path), tmp_path / "o", skip_invalid=True)
    assert "stray.png: PNG outside the keras_png_slices_* folders" in str(error.value)


def test_configs_type_check():
    for name in ("lits", "oasis"):
        config = load_component("datasets", name)  # every key checked against NiftiDataModule; reads no data
        assert config.name == name
