"""Tests of the synthetic brain MRI generator on tiny 4 mm datasets (whole file well under 30 s)."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from datamodules.synthetic_brain import (
    HEALTHY,
    LESION_KINDS,
    SyntheticBrainSpec,
    _make_subject,
    dataset_dir_name,
    generate_synthetic_brain,
    split_csv_paths,
)

TINY = SyntheticBrainSpec(
    seed=3, n_train=2, n_val=1, n_test_healthy=1, n_test_per_lesion=2, n_unlabelled=4, resolution_mm=4.0
)
MINI = SyntheticBrainSpec(
    seed=5, n_train=1, n_val=0, n_test_healthy=0, n_test_per_lesion=0, n_unlabelled=0, resolution_mm=4.0
)
SPLITS = ["train", "val", "test_healthy", *(f"test_{k}" for k in LESION_KINDS), "unlabelled"]
PROPERTY_SPEC = replace(TINY, seed=11)
N_PROPERTY = 4


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["subject", "image", "mask", "roi"]
        return list(reader)


def _rows(dataset: Path) -> dict[str, list[dict[str, str]]]:
    return {name: _read_csv(path) for name, path in split_csv_paths(dataset).items()}


def _load(csv_path: Path, rel: str) -> nib.Nifti1Image:
    return nib.load(csv_path.parent / rel)


def _volumes(dataset: Path) -> dict[str, np.ndarray]:
    """All images of a dataset keyed by file name."""
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted((dataset / "images").glob("*.nii.gz"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_brain(tmp_path_factory.mktemp("synth"), TINY, progress=False)


@pytest.fixture(scope="module")
def subjects() -> dict[str, list]:
    """A few 4 mm subjects per lesion kind (with their before / after scanner-effect volumes)."""
    return {
        kind: [_make_subject(PROPERTY_SPEC, f"sub-prop-{i:03d}", kind) for i in range(N_PROPERTY)]
        for kind in LESION_KINDS
    }


def test_layout_and_csvs(dataset: Path) -> None:
    assert dataset.name == dataset_dir_name(TINY) and dataset.name.startswith("seed3-")
    assert (dataset / "manifest.json").is_file()
    paths = split_csv_paths(dataset)
    assert list(paths) == SPLITS
    rows = _rows(dataset)
    counts = {"train": 2, "val": 1, "test_healthy": 1, "unlabelled": 4, **{f"test_{k}": 2 for k in LESION_KINDS}}
    assert {name: len(r) for name, r in rows.items()} == counts
    ids = [row["subject"] for r in rows.values() for row in r]
    assert len(ids) == len(set(ids))
    for name, split_rows in rows.items():
        for row in split_rows:
            for key, folder in (("image", "images"), ("mask", "masks"), ("roi", "brain")):
                assert row[key] == f"../{folder}/{row['subject']}.nii.gz"
                assert (paths[name].parent / row[key]).resolve().is_file()
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # no leftover temp folders


def test_nifti_contents(dataset: Path) -> None:
    paths, rows = split_csv_paths(dataset), _rows(dataset)
    for name, split_rows in rows.items():
        for row in split_rows:
            image = _load(paths[name], row["image"])
            mask_img, brain_img = _load(paths[name], row["mask"]), _load(paths[name], row["roi"])
            data, mask, brain = (np.asarray(i.dataobj) for i in (image, mask_img, brain_img))
            assert data.dtype == np.float32 and mask.dtype == np.uint8 and brain.dtype == np.uint8
            assert data.shape == mask.shape == brain.shape and data.ndim == 3
            assert np.allclose(image.header.get_zooms(), 4.0)
            assert np.array_equal(image.affine, mask_img.affine) and np.array_equal(image.affine, brain_img.affine)
            assert np.isfinite(data).all()
            assert set(np.unique(mask)) <= {0, 1} and set(np.unique(brain)) <= {0, 1}
            assert not (mask & (1 - brain)).any(), "lesion mask must lie inside the brain mask"
            assert np.median(data[brain == 0]) < 0.1 < np.median(data[brain == 1])
            if name in ("train", "val", "test_healthy"):
                assert not mask.any()
            elif name.startswith("test_"):
                assert mask.any(), f"{row['subject']} has an empty lesion mask"


def test_unlabelled_pool(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    kinds = {s["subject"]: s["kind"] for s in manifest["subjects"] if s["split"] == "unlabelled"}
    assert sorted(kinds.values()).count(HEALTHY) == 2 and set(kinds.values()) - {HEALTHY} <= set(LESION_KINDS)
    rows = _rows(dataset)
    tests = {row["subject"] for name, r in rows.items() if name.startswith("test_") for row in r}
    csv_path = split_csv_paths(dataset)["unlabelled"]
    for row in rows["unlabelled"]:
        assert row["subject"] not in tests
        mask = np.asarray(_load(csv_path, row["mask"]).dataobj)
        assert mask.any() == (kinds[row["subject"]] != HEALTHY)


def test_deterministic_and_seed_dependent(dataset: Path, tmp_path: Path) -> None:
    # a smaller spec with the same seed reproduces the same subjects byte for byte (subjects depend on seed and id)
    small = replace(TINY, n_train=1, n_val=0, n_test_healthy=0, n_test_per_lesion=1, n_unlabelled=0)
    again = generate_synthetic_brain(tmp_path / "again", small, progress=False)
    assert again.name != dataset.name
    files = sorted(p.relative_to(again) for p in again.glob("*/*.nii.gz"))
    assert len(files) == 3 * (1 + len(LESION_KINDS))
    for rel in files:
        assert (again / rel).read_bytes() == (dataset / rel).read_bytes(), rel
    first = _volumes(dataset)
    other = _volumes(generate_synthetic_brain(tmp_path / "other", MINI, progress=False))
    assert not np.array_equal(first["sub-train-000.nii.gz"], other["sub-train-000.nii.gz"])
    assert not np.array_equal(first["sub-train-000.nii.gz"], first["sub-train-001.nii.gz"])


def test_second_call_skips(dataset: Path) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in dataset.rglob("*") if p.is_file()}
    start = time.perf_counter()
    assert generate_synthetic_brain(dataset.parent, TINY, progress=False) == dataset
    assert time.perf_counter() - start < 1.0
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*") if p.is_file()} == mtimes


def test_incomplete_folder_is_regenerated(tmp_path: Path) -> None:
    folder = generate_synthetic_brain(tmp_path, MINI, progress=False)
    reference = _volumes(folder)
    (folder / "manifest.json").unlink()
    (folder / "images" / "sub-train-000.nii.gz").unlink()
    (folder / "stale.txt").write_text("left over")
    assert generate_synthetic_brain(tmp_path, MINI, progress=False) == folder
    assert (folder / "manifest.json").is_file() and not (folder / "stale.txt").exists()
    regenerated = _volumes(folder)
    assert regenerated.keys() == reference.keys()
    assert all(np.array_equal(regenerated[k], reference[k]) for k in reference)
    assert sorted(os.listdir(tmp_path)) == [folder.name]


def test_spec_validation_and_naming() -> None:
    with pytest.raises(ValueError):
        SyntheticBrainSpec(lesion_kinds=("tumor", "glioma"))
    with pytest.raises(ValueError):
        SyntheticBrainSpec(n_train=-1)
    assert dataset_dir_name(TINY) != dataset_dir_name(replace(TINY, noise_std_range=(0.0, 0.1)))
    assert dataset_dir_name(TINY) == dataset_dir_name(replace(TINY, lesion_kinds=list(LESION_KINDS)))


def test_lesion_changes_image_only_inside_mask(subjects: dict[str, list]) -> None:
    for kind, subs in subjects.items():
        for sub in subs:
            mask = sub.mask.astype(bool)
            assert mask.any() and not (mask & (sub.brain == 0)).any()
            assert np.array_equal(sub.lesioned[~mask], sub.healthy[~mask]), kind
            assert (sub.lesioned[mask] != sub.healthy[mask]).mean() > 0.99, kind
            assert sub.image.dtype == np.float32 and np.isfinite(sub.image).all()


def test_anatomy_does_not_depend_on_lesion_kind(subjects: dict[str, list]) -> None:
    healthy = _make_subject(PROPERTY_SPEC, "sub-prop-000", HEALTHY)
    assert not healthy.mask.any()
    assert np.array_equal(healthy.healthy, healthy.lesioned)
    for kind in ("ms", "stroke"):  # tumours displace tissue (mass effect), the other kinds do not
        assert np.array_equal(subjects[kind][0].healthy, healthy.healthy)
        assert np.array_equal(subjects[kind][0].brain, healthy.brain)


def test_lesion_sizes(subjects: dict[str, list]) -> None:
    voxel_cm3 = PROPERTY_SPEC.resolution_mm**3 / 1000
    tumor_volumes = [s.mask.sum() * voxel_cm3 for s in subjects["tumor"]]
    ms_single = []
    for sub in subjects["ms"]:
        labels, n = ndimage.label(sub.mask)
        ms_single += list(np.bincount(labels.ravel())[1:] * voxel_cm3)
        assert n >= 1
    assert min(tumor_volumes) > 2.0 and max(tumor_volumes) < 120.0
    assert np.mean(tumor_volumes) > 10 * np.mean(ms_single)
    for sub in subjects["tumor"]:
        assert ndimage.label(sub.mask)[1] == 1, "a tumour is one connected mass"


def test_lesion_intensities(subjects: dict[str, list]) -> None:
    for sub in subjects["ms"]:
        mask = sub.mask.astype(bool)
        assert sub.wm[mask].mean() > 0.5, "MS lesions lie mostly in white matter"
        assert (sub.lesioned[mask] > sub.healthy[mask]).mean() > 0.95, "MS lesions are hyperintense"
    for sub in subjects["stroke"]:
        mask = sub.mask.astype(bool)
        assert sub.lesioned[mask].mean() < sub.healthy[mask].mean()
        assert (sub.lesioned[mask] < sub.healthy[mask]).mean() > 0.9, "stroke lesions are hypointense"
    for sub in subjects["tumor"]:
        mask = sub.mask.astype(bool)
        wm_ref = np.median(sub.healthy[(sub.wm > 0.9) & (sub.brain > 0)])
        csf_like = np.median(sub.healthy[(sub.wm + sub.gm < 0.2) & (sub.brain > 0)])
        assert sub.lesioned[mask].max() > 1.05 * wm_ref, "enhancing rim brighter than white matter"
        assert sub.lesioned[mask].min() < 1.2 * csf_like, "necrotic core is CSF-like"
        assert (sub.lesioned[mask] < sub.healthy[mask]).mean() > 0.3, "oedema and core are hypointense"
