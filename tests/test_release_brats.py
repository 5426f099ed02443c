"""BraTS adapter and the prepare engine: miniature releases in the 2019 / 2021 / 2023 layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from datamodules.nifti import NiftiDataModule
from datamodules.releases import release_class
from datamodules.releases.base import ReleaseError, prepare
from tests.releases import SHAPE, blob, brain, native_grid_cache, snapshot, write_nifti

KINDS = ("t1", "t1ce", "t2", "flair")


def tumour_seg(shape=SHAPE, enhancing: int = 4) -> np.ndarray:
    """Labels: oedema 2 (outer ball), necrotic core 1 (inner), enhancing ring ``enhancing`` between them."""
    centre = (12, 14, 10)
    seg = np.zeros(shape, np.uint8)
    seg[blob(shape, centre, 5)] = 2
    seg[blob(shape, centre, 3.5)] = enhancing
    seg[blob(shape, centre, 2)] = 1
    return seg


def write_subject(folder: Path, rng, naming: str = "2021", skip: tuple[str, ...] = (), seg=None) -> None:
    name = folder.name
    image = brain(rng)
    seg = tumour_seg(enhancing=3 if naming == "2023" else 4) if seg is None else seg
    image[seg > 0] = 1.0  # the tumour is bright in every modality: alignment is visible
    kinds = dict(zip(KINDS, ("t1n", "t1c", "t2w", "t2f"), strict=True)) if naming == "2023" else {k: k for k in KINDS}
    sep = "-" if naming == "2023" else "_"
    for kind, spelled in kinds.items():
        if kind not in skip:
            write_nifti(folder / f"{name}{sep}{spelled}.nii.gz", image * (1 + KINDS.index(kind)))
    if "seg" not in skip:
        write_nifti(folder / f"{name}{sep}seg.nii.gz", seg)


def brats2021(root: Path, n: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_subject(root / f"BraTS2021_{i:05d}", rng)
    (root / "name_mapping.csv").write_text("ignored\n")
    return root


def test_prepare_writes_subject_level_splits_and_is_idempotent(tmp_path):
    root = brats2021(tmp_path / "BraTS2021_Training_Data")
    out = tmp_path / "prepared"
    assert main(["prepare", "brats", "--root", str(root), "--out", str(out)]) == 0
    tables = {p.stem: pd.read_csv(p) for p in out.glob("*.csv")}
    assert set(tables) == {"train", "val", "unlabelled", "test_tumor"}
    assert {k: len(v) for k, v in tables.items()} == {"train": 5, "val": 1, "unlabelled": 1, "test_tumor": 3}
    subjects = [s for t in tables.values() for s in t["subject"]]
    assert len(subjects) == len(set(subjects)) == 10
    row = tables["test_tumor"].iloc[0]
    assert Path(row["image_t2"]).name == f"{row['subject']}_t2.nii.gz" and Path(row["image_t2"]).is_absolute()
    assert Path(row["mask"]).name == f"{row['subject']}_seg.nii.gz" and row["mask_labels"] == "1 2 4"
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["csvs"]["test_tumor.csv"] == 3 and manifest["seed"] == 0

    before = snapshot(out)
    assert main(["prepare", "brats", "--root", str(root), "--out", str(out)]) == 0
    assert snapshot(out) == before

    # another seed reshuffles, another split removes the CSVs that are no longer produced
    assert main(["prepare", "brats", "--root", str(root), "--out", str(out), "--pathology-split", "test=1"]) == 0
    assert sorted(p.name for p in out.glob("*.csv")) == ["test_tumor.csv"]
    assert len(pd.read_csv(out / "test_tumor.csv")) == 10


def test_batches_align_with_the_tumour_and_map_labels(tmp_path):
    root = brats2021(tmp_path / "release", n=6)
    out = tmp_path / "prepared"
    prepare(release_class("brats")(root), out, pathology_split="train=0.5,val=0.17,test=0.33")
    dm = NiftiDataModule(train_csv=str(out / "train.csv"), val_csv=str(out / "val.csv"),
                         test_csvs={"tumor": str(out / "test_tumor.csv")}, cache_dir=str(tmp_path / "cache"),
                         modality="t2", roi_from_foreground=True, image_size=16, min_lesion_pixels=1,
                         min_roi_fraction=0.05, progress=False)
    dm.prepare_data()
    dm.setup()
    test = dm.splits.tests["tumor"]
    images, masks, rois = (np.asarray(a)[:, 0] for a in (test.images, test.masks, test.rois))
    assert test.labels.sum() > 0
    lesion = masks > 0
    assert images[lesion].mean() > images[(rois > 0) & ~lesion].mean() + 0.3  # the mask sits on the bright tumour
    assert (masks <= rois).all()  # the tumour lies inside the foreground roi
    # training keeps only tumour-free slices of its (pathological) subjects
    assert (np.asarray(dm.splits.train.masks) == 0).all() and len(dm.splits.train) > 0
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape[1:] == (1, 16, 16) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}


def test_label_groupings_select_the_labelled_regions(tmp_path):
    root = brats2021(tmp_path / "release", n=3)
    sizes = {}
    for labels in ("whole_tumor", "tumor_core", "enhancing"):
        out = tmp_path / labels
        prepare(release_class("brats")(root, labels=labels), out, pathology_split="test=1")
        cache = native_grid_cache(out / "test_tumor.csv", "flair", tmp_path / "cache")
        sizes[labels] = int(np.asarray(cache.open().masks).sum())
    seg = tumour_seg()
    expected = {"whole_tumor": (seg > 0).sum(), "tumor_core": np.isin(seg, (1, 4)).sum(), "enhancing": (seg == 4).sum()}
    for labels, count in sizes.items():  # padded to a 28 px square, not resampled: exact counts
        assert count == 3 * expected[labels], labels
    assert sizes["whole_tumor"] > sizes["tumor_core"] > sizes["enhancing"] > 0


def test_2019_and_2023_layouts(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "mixed"
    write_subject(root / "HGG" / "BraTS19_2013_2_1", rng)
    write_subject(root / "LGG" / "BraTS19_2013_0_1", rng)
    write_subject(root / "BraTS-GLI-00000-000", rng, naming="2023")
    subjects, problems = release_class("brats")(root).scan()
    assert problems == []
    by_id = {s.id: s for s in subjects}
    assert by_id["BraTS19_2013_2_1"].extra == {"grade": "HGG"}
    modern = by_id["BraTS-GLI-00000-000"]
    assert modern.mask_labels == (1, 2, 3) and set(modern.files) == {"image_t1", "image_t1ce", "image_t2",
                                                                      "image_flair", "mask"}
    assert modern.files["image_flair"].name.endswith("-t2f.nii.gz")
    prepare(release_class("brats")(root), tmp_path / "out", pathology_split="test=1")  # 2023 labels {0,1,2,3} pass


def test_broken_release_gives_one_clear_report(tmp_path):
    rng = np.random.default_rng(2)
    root = brats2021(tmp_path / "release", n=4)
    write_subject(root / "BraTS2021_00100", rng, skip=("flair",))  # missing modality
    bad_seg = tumour_seg()
    bad_seg[0, 0, 0] = 3  # 3 is not a 2021 label
    write_subject(root / "BraTS2021_00101", rng, seg=bad_seg)
    write_subject(root / "BraTS2021_00102", rng)
    write_nifti(root / "BraTS2021_00102" / "BraTS2021_00102_seg.nii.gz", np.zeros((10, 10, 10), np.uint8))
    write_subject(root / "BraTS2021_00103", rng)
    (root / "BraTS2021_00103" / "BraTS2021_00103_t1.nii.gz").write_bytes(b"not a nifti file")
    write_subject(root / "BraTS2021_00104", rng, skip=("seg",))
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("brats")(root), out)
    report = str(error.value)
    for expected in ("[BraTS2021_00100]", "missing flair", "[BraTS2021_00101]", "unexpected label value(s) [3.0]",
                     "[BraTS2021_00102]", "shape (10, 10, 10)", "[BraTS2021_00103]", "unreadable image_t1",
                     "[BraTS2021_00104]", "missing seg", "No split CSV was written", "--skip-invalid"):
        assert expected in report, expected
    assert not list(out.glob("*.csv")) and (out / "prepare_report.txt").read_text().strip() == report.strip()
    assert main(["prepare", "brats", "--root", str(root), "--out", str(out)]) == 2  # the CLI says it, no traceback

    result = prepare(release_class("brats")(root), out, skip_invalid=True, pathology_split="test=1")
    assert sorted(result.skipped) == [f"BraTS2021_0010{i}" for i in range(5)]
    kept = pd.read_csv(out / "test_tumor.csv")["subject"].tolist()
    assert len(kept) == 4 and not set(kept) & set(result.skipped)
    assert json.loads((out / "prepare.json").read_text())["skipped"]["BraTS2021_00100"]


def test_option_and_release_errors(tmp_path):
    assert main(["prepare", "brats", "--root", str(tmp_path / "nowhere")]) == 2
    root = brats2021(tmp_path / "release", n=2)
    assert main(["prepare", "brats", "--root", str(root), "--set", "colour=red"]) == 2
    assert main(["prepare", "nosuch", "--root", str(root)]) == 2
    with pytest.raises(ReleaseError, match="sum to 1"):
        prepare(release_class("brats")(root), tmp_path / "o", pathology_split="test=0.5")
    with pytest.raises(ReleaseError, match="unknown modality"):
        release_class("brats")(root, modalities=["pd"])
    with pytest.raises(ReleaseError, match="no subject found"):
        (tmp_path / "empty").mkdir()
        prepare(release_class("brats")(tmp_path / "empty"), tmp_path / "o2")  # a folder without any BraTS file
