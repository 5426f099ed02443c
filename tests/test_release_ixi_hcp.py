"""IXI and HCP adapters: miniature healthy-only releases in the official layouts.

Neither release has lesions, so alignment is checked through the roi: the brain is drawn brighter than anything
around it and the brain mask covers exactly the bright voxels, so after loading every roi pixel must be brighter
than every pixel outside it, and the roi pixel count must equal the mask's voxel count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark.cli import main
from benchmark.config import load_component
from datamodules.nifti import NiftiDataModule
from datamodules.releases import release_class
from datamodules.releases.base import ReleaseError, prepare
from tests.releases import SHAPE, blob, snapshot, write_nifti

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"
SITES = ("Guys", "HH", "IOP")
T1_AFFINE = np.diag([1.2, 0.9375, 0.9375, 1.0])  # sagittal T1: another grid than T2 / PD
T2_SHAPE, T2_AFFINE = (20, 24, 16), np.diag([0.94, 0.94, 1.2, 1.0])
MNI_SHAPE = (22, 26, 18)


def head(rng: np.random.Generator, shape=SHAPE, skull: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image, brain mask): an off-centre bright brain in [0.8, 1], a dimmer skull shell and background noise."""
    centre = tuple(0.45 * n for n in shape)  # off-centre, so a flipped or transposed mask would not fit
    brain = blob(shape, centre, 0.3 * min(shape))
    image = np.zeros(shape, np.float32)
    if skull:
        image += rng.uniform(0.0, 0.15, shape).astype(np.float32)
        image[blob(shape, centre, 0.4 * min(shape)) & ~brain] = 0.3
    image[brain] = rng.uniform(0.8, 1.0, int(brain.sum()))
    return image, brain.astype(np.uint8)


def ixi_id(i: int) -> str:
    return f"IXI{i + 2:03d}-{SITES[i % 3]}-{828 + i:04d}"


def write_ixi_subject(root: Path, subject: str, rng, flat: bool = False, skip: tuple[str, ...] = ()) -> np.ndarray:
    """The T1, T2, PD files of one subject; returns its T1 brain mask."""
    t1, brain = head(rng)
    t2, _ = head(rng, T2_SHAPE)
    for kind, image, affine in (("T1", t1, T1_AFFINE), ("T2", t2, T2_AFFINE), ("PD", 0.5 * t2, T2_AFFINE)):
        if kind.lower() not in skip:
            folder = root if flat else root / f"IXI-{kind}"
            write_nifti(folder / f"{subject}-{kind}.nii.gz", image, affine)
    return brain


def ixi_release(root: Path, n: int = 10, flat: bool = False, masks: Path | None = None, seed: int = 0) -> Path:
    """``n`` subjects across the three sites, the spreadsheet and one MRA image (ignored); masks if asked."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        brain = write_ixi_subject(root, ixi_id(i), rng, flat)
        if masks is not None:
            suffix = ".nii" if i == 0 else ".nii.gz"  # both spellings are accepted
            write_nifti(masks / f"{ixi_id(i)}{suffix}", brain, T1_AFFINE)
    (root / "IXI.xls").write_bytes(b"spreadsheet")
    write_nifti(root / ("" if flat else "IXI-MRA") / f"{ixi_id(0)}-MRA.nii.gz", np.zeros((4, 4, 4), np.float32))
    return root


HCP_IDS = ("100206", "100307", "100408", "100610", "101006", "101107")


def write_hcp_subject(root: Path, subject: str, rng, spaces=("T1w", "MNINonLinear"), skip: tuple[str, ...] = ()):
    """Skull-stripped T1w / T2w (zero outside the brain), float brainmask_fs, and some unused package files."""
    for space in spaces:
        shape = SHAPE if space == "T1w" else MNI_SHAPE
        image, brain = head(rng, shape, skull=False)
        stems = {"T1w": ("T1w_acpc_dc_restore_brain", "T2w_acpc_dc_restore_brain"),
                 "MNINonLinear": ("T1w_restore_brain", "T2w_restore_brain")}[space]
        for stem, scale in zip(stems, (0.7, 1.0), strict=True):
            if stem not in skip:
                write_nifti(root / subject / space / f"{stem}.nii.gz", image * scale)
        if "brainmask_fs" not in skip:
            write_nifti(root / subject / space / "brainmask_fs.nii.gz", brain.astype(np.float32))  # float 0 / 1
        write_nifti(root / subject / space / "aparc+aseg.nii.gz", (brain * 17).astype(np.int16))  # ignored
    (root / subject / "release-notes").mkdir(parents=True, exist_ok=True)
    (root / subject / "release-notes" / "Structural_preproc.txt").write_text("notes\n")


def hcp_release(root: Path, ids=HCP_IDS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for subject in ids:
        write_hcp_subject(root, subject, rng)
    (root / "unrestricted_behavioral.csv").write_text("Subject\n")
    return root


def datamodule_from_config(name: str, out: Path, cache: Path, **overrides) -> NiftiDataModule:
    """The dataset's YAML as written, with the prepared CSVs, a tmp cache and small images."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert config["class_path"] == "datamodules.nifti.NiftiDataModule"
    args = dict(config["init_args"])
    for key in ("train_csv", "val_csv"):
        args[key] = str(out / Path(args[key]).name)
    args["test_csvs"] = {k: str(out / Path(v).name) for k, v in args["test_csvs"].items()}
    args.update(cache_dir=str(cache), image_size=16, progress=False, batch_size=4)
    args.update(overrides)
    return NiftiDataModule(**args)


def exact_geometry() -> dict:
    """Settings that keep every voxel: no crop, no resampling (28 px square), identity intensity window."""
    return dict(image_size=max(SHAPE[:2]), crop_to_roi=False, zero_outside_roi=False, intensity_window=(0.0, 1.0),
                slice_range=None, min_roi_fraction=0.0)


def check_roi_on_bright_brain(dm: NiftiDataModule, voxels_per_subject: int, n_subjects: int) -> None:
    dm.prepare_data()
    dm.setup()
    arrays = [dm.splits.train, dm.splits.val, *dm.splits.tests.values()]
    images = np.concatenate([np.asarray(a.images)[:, 0] for a in arrays])
    rois = np.concatenate([np.asarray(a.rois)[:, 0] for a in arrays]) > 0
    assert rois.sum() == voxels_per_subject * n_subjects  # exactly the mask's voxels, nothing resampled
    assert images[rois].min() >= 0.8 - 1e-6 > 0.3 + 1e-6 >= images[~rois].max()  # the roi is the bright brain


# ------------------------------------------------------------------------------------------------------- IXI
def test_ixi_prepare_splits_by_subject_and_is_idempotent(tmp_path):
    root = ixi_release(tmp_path / "IXI")
    out = tmp_path / "prepared"
    assert main(["prepare", "ixi", "--root", str(root), "--out", str(out)]) == 0
    tables = {p.stem: pd.read_csv(p) for p in out.glob("*.csv")}
    assert {k: len(v) for k, v in tables.items()} == {"train": 8, "val": 1, "test_healthy": 1}
    subjects = [s for t in tables.values() for s in t["subject"]]
    assert len(subjects) == len(set(subjects)) == 10 and set(subjects) == {ixi_id(i) for i in range(10)}
    row = tables["train"].iloc[0]
    assert list(tables["train"].columns) == ["subject", "image_pd", "image_t1", "image_t2"]  # no roi without masks
    for kind in ("t1", "t2", "pd"):
        path = Path(row[f"image_{kind}"])
        assert path.is_absolute() and path.name == f"{row['subject']}-{kind.upper()}.nii.gz"
        assert path.parent.name == f"IXI-{kind.upper()}"
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["groups"] == {"healthy": sorted(subjects)} and manifest["skipped"] == {}
    assert sorted(s for split in manifest["subjects"].values() for s in split) == sorted(subjects)

    before = snapshot(out)
    assert main(["prepare", "ixi", "--root", str(root), "--out", str(out)]) == 0
    assert snapshot(out) == before  # byte-identical, not even rewritten

    # one modality: another seed reshuffles the same subjects, still disjoint
    assert main(["prepare", "ixi", "--root", str(root), "--out", str(out), "--modalities", "t1", "--seed", "3"]) == 0
    again = {p.stem: pd.read_csv(p) for p in out.glob("*.csv")}
    assert list(again["train"].columns) == ["subject", "image_t1"]
    assert sorted(s for t in again.values() for s in t["subject"]) == sorted(subjects)


def test_ixi_flat_layout_sites_and_ignored_files(tmp_path):
    root = ixi_release(tmp_path / "flat", n=6, flat=True)
    subjects, problems = release_class("ixi")(root).scan()
    assert problems == []
    by_id = {s.id: s for s in subjects}
    assert sorted(by_id) == sorted(ixi_id(i) for i in range(6))  # the MRA image and IXI.xls are not subjects
    assert {s.extra["site"] for s in subjects} == set(SITES) and by_id[ixi_id(1)].extra == {"site": "HH"}
    assert all(s.group == "healthy" and s.patient is None for s in subjects)
    assert set(by_id[ixi_id(0)].files) == {"image_t1", "image_t2", "image_pd"}
    assert release_class("ixi").coregistered is False
    prepare(release_class("ixi")(root), tmp_path / "out")  # T1 and T2 / PD grids differ: not a problem


def test_ixi_batches_through_the_dataset_config(tmp_path):
    root = ixi_release(tmp_path / "IXI")
    out = tmp_path / "prepared"
    assert main(["prepare", "ixi", "--root", str(root), "--out", str(out), "--modalities", "t1"]) == 0
    assert load_component("datasets", "ixi").name == "ixi"
    dm = datamodule_from_config("ixi", out, tmp_path / "cache")
    assert dm.modality == "t1" and set(dm.csvs) == {"train", "val", "test/healthy"}
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 16, 16) and 0.0 <= batch["image"].min() <= batch["image"].max() <= 1.0
    healthy = dm.splits.tests["healthy"]
    assert len(healthy) > 0 and (np.asarray(healthy.labels) == 0).all() and (np.asarray(healthy.masks) == 0).all()
    rois = np.asarray(healthy.rois)[:, 0] > 0  # raw IXI without masks: the whole field of view, a full band
    columns = rois.any(axis=1)  # (the 24 x 28 grid is padded to a square)
    assert (rois == columns[:, None, :]).all() and rois.mean() > 0.8


def test_ixi_brain_masks_become_the_roi_on_the_bright_brain(tmp_path):
    masks = tmp_path / "masks"
    root = ixi_release(tmp_path / "IXI", n=5, masks=masks)
    out = tmp_path / "prepared"
    argv = ["prepare", "ixi", "--root", str(root), "--out", str(out), "--modalities", "t1",
            "--set", f"brain_masks={masks}"]
    assert main(argv) == 0
    rows = pd.concat([pd.read_csv(p) for p in out.glob("*.csv")])
    assert list(rows.columns) == ["subject", "image_t1", "roi"]
    assert all(Path(r).name.split(".")[0] == s for s, r in zip(rows["subject"], rows["roi"], strict=True))
    assert json.loads((out / "prepare.json").read_text())["options"]["brain_masks"] == str(masks.resolve())
    _, brain = head(np.random.default_rng(0))
    dm = datamodule_from_config("ixi", out, tmp_path / "cache", **exact_geometry())
    check_roi_on_bright_brain(dm, int(brain.sum()), 5)

    # masks lie on one modality's grid: the default (every modality) is refused, clearly
    with pytest.raises(ReleaseError, match="select exactly one with --modalities"):
        release_class("ixi")(root, brain_masks=str(masks))
    assert main([*argv[:-4], "--set", f"brain_masks={masks}"]) == 2
    assert main([*argv[:-1], f"brain_masks={tmp_path / 'nowhere'}"]) == 2


def test_ixi_broken_release_gives_one_clear_report(tmp_path):
    root = ixi_release(tmp_path / "IXI", n=6)
    rng = np.random.default_rng(5)
    write_ixi_subject(root, "IXI014-HH-1236", rng, skip=("t2",))  # missing modality
    write_ixi_subject(root, "IXI015-HH-1237", rng)
    (root / "IXI-T1" / "IXI015-HH-1237-T1.nii.gz").write_bytes(b"not a nifti file")  # unreadable
    write_ixi_subject(root, "IXI016-IOP-0900", rng)
    write_nifti(root / "IXI-T1" / "IXI016-IOP-0900-T1_brain.nii.gz", np.zeros((4, 4, 4), np.float32))  # odd name
    write_ixi_subject(root, "IXI017-Guys-0901", rng, skip=("t1",))
    write_nifti(root / "IXI-T2" / "IXI017-Guys-0901-T1.nii.gz", np.zeros((4, 4, 4), np.float32))  # wrong folder
    write_nifti(root / "IXI-PD" / "scan.nii.gz", np.zeros((4, 4, 4), np.float32))  # no IXI id at all
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("ixi")(root), out)
    report = str(error.value)
    for expected in ("[IXI014-HH-1236]", "missing t2 image", "--modalities t1", "--skip-invalid",
                     "[IXI015-HH-1237]", "unreadable image_t1", "[IXI016-IOP-0900]", "IXI016-IOP-0900-T1_brain.nii.gz",
                     "does not follow the IXI naming", "[IXI017-Guys-0901]", "t1 image inside the IXI-T2 folder",
                     "missing t1 image", "[scan.nii.gz]", "No split CSV was written", "IXI-T1/IXI002-Guys-0828"):
        assert expected in report, expected
    assert not list(out.glob("*.csv")) and (out / "prepare_report.txt").read_text().strip() == report.strip()
    assert main(["prepare", "ixi", "--root", str(root), "--out", str(out)]) == 2  # the CLI says it, no traceback

    assert main(["prepare", "ixi", "--root", str(root), "--out", str(out), "--skip-invalid"]) == 0
    skipped = json.loads((out / "prepare.json").read_text())["skipped"]
    bad = {"IXI014-HH-1236", "IXI015-HH-1237", "IXI016-IOP-0900", "IXI017-Guys-0901", "scan.nii.gz"}
    assert set(skipped) == bad and "missing t2 image" in skipped["IXI014-HH-1236"][0]
    kept = [s for p in out.glob("*.csv") for s in pd.read_csv(p)["subject"]]
    assert sorted(kept) == sorted(ixi_id(i) for i in range(6))

    # only T1: the subject without T2 is complete
    result = prepare(release_class("ixi")(root, modalities=["t1"]), out, skip_invalid=True)
    assert set(result.skipped) == bad - {"IXI014-HH-1236"}


def test_ixi_broken_brain_masks(tmp_path):
    masks = tmp_path / "masks"
    root = ixi_release(tmp_path / "IXI", n=6, masks=masks)
    write_nifti(masks / f"{ixi_id(1)}.nii.gz", np.ones(T2_SHAPE, np.uint8), T2_AFFINE)  # the T2 grid, not T1
    bad_values = head(np.random.default_rng(0))[1] * 255
    write_nifti(masks / f"{ixi_id(2)}.nii.gz", bad_values.astype(np.uint8), T1_AFFINE)  # 0 / 255
    (masks / f"{ixi_id(3)}.nii.gz").unlink()  # no mask
    write_nifti(masks / "IXI999-IOP-0001.nii.gz", np.ones(SHAPE, np.uint8), T1_AFFINE)  # no such subject
    release = release_class("ixi")(root, modalities=["t1"], brain_masks=str(masks))
    with pytest.raises(ReleaseError) as error:
        prepare(release, tmp_path / "out")
    report = str(error.value)
    for expected in (f"[{ixi_id(1)}]", "roi has shape (20, 24, 16) but image_t1 has (24, 28, 20)",
                     f"[{ixi_id(2)}]", "roi has unexpected label value(s) [255.0]",
                     f"[{ixi_id(3)}]", f"no brain mask {ixi_id(3)}.nii.gz", "[IXI999-IOP-0001]",
                     "brain mask of a subject without images"):
        assert expected in report, expected
    result = prepare(release, tmp_path / "out", skip_invalid=True)
    assert set(result.skipped) == {ixi_id(1), ixi_id(2), ixi_id(3), "IXI999-IOP-0001"}
    assert sum(result.counts.values()) == 3


# ------------------------------------------------------------------------------------------------------- HCP
def test_hcp_prepare_splits_by_subject_and_is_idempotent(tmp_path):
    root = hcp_release(tmp_path / "HCP_1200")
    out = tmp_path / "prepared"
    assert main(["prepare", "hcp", "--root", str(root), "--out", str(out)]) == 0
    tables = {p.stem: pd.read_csv(p, dtype=str) for p in out.glob("*.csv")}
    assert {k: len(v) for k, v in tables.items()} == {"train": 4, "val": 1, "test_healthy": 1}
    subjects = [s for t in tables.values() for s in t["subject"]]
    assert sorted(subjects) == sorted(HCP_IDS) and len(set(subjects)) == 6
    row = tables["train"].iloc[0]
    assert list(tables["train"].columns) == ["subject", "image_t1", "image_t2", "roi"]
    assert Path(row["image_t2"]) == root.resolve() / row["subject"] / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz"
    assert Path(row["image_t1"]).name == "T1w_acpc_dc_restore_brain.nii.gz"
    assert Path(row["roi"]) == root.resolve() / row["subject"] / "T1w" / "brainmask_fs.nii.gz"
    assert json.loads((out / "prepare.json").read_text())["options"] == {"modalities": ["t1", "t2"], "space": "acpc"}

    before = snapshot(out)
    assert main(["prepare", "hcp", "--root", str(root), "--out", str(out)]) == 0
    assert snapshot(out) == before

    # MNI space: the MNINonLinear files, on their own grid
    assert main(["prepare", "hcp", "--root", str(root), "--out", str(out), "--set", "space=mni"]) == 0
    row = pd.read_csv(out / "train.csv", dtype=str).iloc[0]
    assert Path(row["image_t2"]).parts[-2:] == ("MNINonLinear", "T2w_restore_brain.nii.gz")
    assert Path(row["roi"]).parts[-2:] == ("MNINonLinear", "brainmask_fs.nii.gz")
    assert main(["prepare", "hcp", "--root", str(root), "--out", str(out), "--set", "space=talairach"]) == 2


def test_hcp_batches_and_roi_through_the_dataset_config(tmp_path):
    root = hcp_release(tmp_path / "HCP_1200")
    out = tmp_path / "prepared"
    assert main(["prepare", "hcp", "--root", str(root), "--out", str(out)]) == 0
    assert load_component("datasets", "hcp").name == "hcp"
    dm = datamodule_from_config("hcp", out, tmp_path / "cache")
    assert dm.modality == "t2"
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 16, 16) and (batch["mask"] == 0).all()
    assert (np.asarray(dm.splits.tests["healthy"].labels) == 0).all()

    _, brain = head(np.random.default_rng(0), skull=False)
    exact = datamodule_from_config("hcp", out, tmp_path / "cache", **exact_geometry())
    check_roi_on_bright_brain(exact, int(brain.sum()), 6)


def test_hcp_broken_release_gives_one_clear_report(tmp_path):
    root = hcp_release(tmp_path / "HCP_1200", ids=HCP_IDS[:4])
    rng = np.random.default_rng(7)
    write_hcp_subject(root, "102008", rng, skip=("T2w_acpc_dc_restore_brain",))  # missing T2
    write_hcp_subject(root, "102311", rng)
    write_nifti(root / "102311" / "T1w" / "brainmask_fs.nii.gz", np.ones(MNI_SHAPE, np.float32))  # wrong grid
    write_hcp_subject(root, "102816", rng)
    (root / "102816" / "T1w" / "T1w_acpc_dc_restore_brain.nii.gz").write_bytes(b"broken")  # unreadable
    write_hcp_subject(root, "103111", rng)
    write_nifti(root / "103111" / "T1w" / "brainmask_fs.nii.gz", np.full(SHAPE, 2, np.float32))  # not 0 / 1
    write_hcp_subject(root, "103414", rng, spaces=("MNINonLinear",))  # only the MNI files
    (root / "__MACOSX").mkdir()  # not a subject folder
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("hcp")(root), out)
    report = str(error.value)
    for expected in ("[102008]", "missing t2 image: T1w/T2w_acpc_dc_restore_brain.nii.gz not found",
                     "[102311]", "roi has shape (22, 26, 18) but image_t1 has (24, 28, 20)",
                     "[102816]", "unreadable image_t1", "[103111]", "roi has unexpected label value(s) [2.0]",
                     "[103414]", "missing brain mask (roi): T1w/brainmask_fs.nii.gz", "--set space=mni",
                     "[__MACOSX]", "not an HCP subject", "No split CSV was written", "T2w_acpc_dc_restore_brain"):
        assert expected in report, expected
    assert not list(out.glob("*.csv"))
    assert main(["prepare", "hcp", "--root", str(root), "--out", str(out)]) == 2

    assert main(["prepare", "hcp", "--root", str(root), "--out", str(out), "--skip-invalid"]) == 0
    skipped = json.loads((out / "prepare.json").read_text())["skipped"]
    assert set(skipped) == {"102008", "102311", "102816", "103111", "103414", "__MACOSX"}
    kept = [s for p in out.glob("*.csv") for s in pd.read_csv(p, dtype=str)["subject"]]
    assert sorted(kept) == sorted(HCP_IDS[:4])

    # T1 only: the subject without T2 is complete; MNI space: every broken file is in T1w/, only __MACOSX is left out
    assert "102008" not in prepare(release_class("hcp")(root, modalities=["t1"]), out, skip_invalid=True).skipped
    mni = prepare(release_class("hcp")(root, space="mni"), out, skip_invalid=True)
    assert set(mni.skipped) == {"__MACOSX"} and sum(mni.counts.values()) == 9
