"""ATLAS v2.0, MSLUB, MS-SEG 2015 and MS-SEG 2016 adapters: miniature releases in their official layouts."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark.cli import main
from datamodules.nifti import NiftiDataModule
from datamodules.releases import release_class
from datamodules.releases.base import ReleaseError, prepare
from tests.releases import SHAPE, blob, brain, ellipsoid_fraction, native_grid_cache, snapshot, write_nifti

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"
CENTRE, RADIUS = (12, 14, 10), 4
LESION = blob(SHAPE, CENTRE, RADIUS)
SECOND_RATER = blob(SHAPE, (12, 16, 10), RADIUS)  # rater 2 sees the lesion shifted by 2 voxels


def head_with_lesion(rng, skull: bool = False, scale: float = 1.0, lesion=LESION) -> np.ndarray:
    """A brain (with a bright skull for ATLAS) whose lesion is brighter than everything else."""
    image = brain(rng, skull=skull)
    image[lesion] = 2.0
    return image * scale


@dataclass
class Written:
    unit: str  # the split unit (patient)
    row: str  # the row id a problem names
    files: dict[str, Path]  # kind (modality, "mask") -> file, to break it


# ------------------------------------------------------------------------------------------- miniature layouts
def atlas_subject(root: Path, i: int, rng, skip=(), mask=None, cohort: str = "R001", part: str = "Training",
                  ses: str = "ses-1") -> Written:
    sub = f"sub-r{int(cohort[1:]):03d}s{i:03d}"
    anat = root / part / cohort / sub / ses / "anat"
    stem = f"{sub}_{ses}_space-MNI152NLin2009aSym"
    files = {}
    if "t1" not in skip:
        files["t1"] = write_nifti(anat / f"{stem}_T1w.nii.gz", head_with_lesion(rng, skull=True))
    if part == "Training" and "mask" not in skip:
        files["mask"] = write_nifti(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz",
                                    LESION.astype(np.uint8) if mask is None else mask)
    (anat / f"{stem}_T1w.json").parent.mkdir(parents=True, exist_ok=True)
    (anat / f"{stem}_T1w.json").write_text("{}")  # BIDS sidecar: ignored
    return Written(sub, sub, files)


MSLUB_TOKENS = {"flair": "FLAIR", "t1": "T1W", "t1ks": "T1WKS", "t2": "T2W"}


def mslub_patient(root: Path, i: int, rng, skip=(), mask=None, variant: str = "coregistered",
                  above: bool = False) -> Written:
    name = f"patient{i:02d}"
    folder = root / variant / name if above else root / name / variant
    files = {}
    for k, (kind, token) in enumerate(MSLUB_TOKENS.items()):
        if kind not in skip:
            files[kind] = write_nifti(folder / f"{token}.nii.gz", head_with_lesion(rng, scale=k + 1))
    files["mask"] = write_nifti(folder / "consensus_gt.nii.gz", LESION.astype(np.uint8) if mask is None else mask)
    if variant != "raw":  # the raw data has no brain mask
        write_nifti(folder / "brainmask.nii.gz", ellipsoid_fraction(SHAPE, 0.7).astype(np.uint8))
    return Written(name, name, files)


def msseg2016_patient(root: Path, i: int, rng, skip=(), mask=None, part: str = "Training",
                      center: int = 1) -> Written:
    folder = root / part / f"Center_{center:02d}" / f"Patient_{i:02d}"
    files = {}
    for k, kind in enumerate(("flair", "t1", "t2", "dp", "gado")):
        if kind not in skip:
            files[kind] = write_nifti(folder / "Preprocessed_Data" / f"{kind.upper()}_preprocessed.nii.gz",
                                      head_with_lesion(rng, scale=k + 1))
    files["mask"] = write_nifti(folder / "Masks" / "Consensus.nii.gz",
                                LESION.astype(np.uint8) if mask is None else mask)
    write_nifti(folder / "Masks" / "Brain_Mask.nii.gz", ellipsoid_fraction(SHAPE, 0.7).astype(np.uint8))
    for rater, lesion in ((1, LESION), (2, SECOND_RATER)):
        write_nifti(folder / "Masks" / f"ManualSegmentation_{rater}.nii.gz", lesion.astype(np.uint8))
    write_nifti(folder / "Raw_Data" / "FLAIR.nii.gz", np.zeros((4, 4, 4), np.float32))  # ignored
    (folder / "README.txt").write_text("ignored")
    pid = ("Testing_" if part == "Testing" else "") + f"Center_{center:02d}_Patient_{i:02d}"
    return Written(pid, pid, files)


def msseg2015_patient(root: Path, i: int, rng, skip=(), mask=None, points: int = 2, part: str = "training",
                      prefix: str = "training") -> Written:
    patient = f"{prefix}{i:02d}"
    folder = root / part / patient
    first = {}
    for t in range(1, points + 1):
        point = f"{patient}_{t:02d}"
        files = {}
        for k, (kind, token) in enumerate((("flair", "flair"), ("t1", "mprage"), ("pd", "pd"), ("t2", "t2"))):
            if not (t == 1 and kind in skip):
                files[kind] = write_nifti(folder / "preprocessed" / f"{point}_{token}_pp.nii",
                                          head_with_lesion(rng, scale=k + 1))
        if part == "training":
            rater1 = LESION.astype(np.uint8) if mask is None or t > 1 else mask
            files["mask"] = write_nifti(folder / "masks" / f"{point}_mask1.nii", rater1)
            write_nifti(folder / "masks" / f"{point}_mask2.nii", SECOND_RATER.astype(np.uint8))
        write_nifti(folder / "orig" / f"{point}_flair.nii.gz", np.zeros((4, 4, 4), np.float32))  # ignored
        first = first or files
    return Written(patient, f"{patient}_01", first)


WRITERS = {"atlas": atlas_subject, "mslub": mslub_patient, "msseg2016": msseg2016_patient,
           "msseg2015": msseg2015_patient}
TEST_SET = {"atlas": "stroke", "mslub": "ms", "msseg2016": "ms", "msseg2015": "ms"}


def release(name: str, root: Path, n: int = 5, seed: int = 0) -> list[Written]:
    rng = np.random.default_rng(seed)
    return [WRITERS[name](root, i, rng) for i in range(1, n + 1)]


def documented_prepare(name: str, root: Path, out: Path) -> list[str]:
    """The prepare command in the dataset config's header, with this test's --root and --out."""
    line = next(line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines()
                if "run_benchmark.py prepare" in line)
    args = shlex.split(line.lstrip("# "))[2:]
    assert args[:2] == ["prepare", name]
    args[args.index("--root") + 1] = str(root)
    return [*args, "--out", str(out)]


def config_datamodule(name: str, out: Path, cache: Path, **overrides) -> NiftiDataModule:
    """The datamodule of configs/datasets/NAME.yaml on the prepared CSVs (tiny image size, cache in tmp)."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert config["class_path"] == "datamodules.nifti.NiftiDataModule"
    args = dict(config["init_args"])
    assert args["image_size"] == 128
    for key in ("train_csv", "val_csv"):
        args[key] = str(out / Path(args[key]).name)
    args["test_csvs"] = {k: str(out / Path(v).name) for k, v in args["test_csvs"].items()}
    args.update(cache_dir=str(cache), image_size=16, progress=False, min_lesion_pixels=1, **overrides)
    return NiftiDataModule(**args)


# ---------------------------------------------------------------------------------------- every adapter alike
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_documented_prepare_feeds_the_dataset_config(name, tmp_path):
    root = tmp_path / "release"
    written = release(name, root)
    out = tmp_path / "prepared"
    command = documented_prepare(name, root, out)
    assert main(command) == 0
    before = snapshot(out)
    assert main(command) == 0 and snapshot(out) == before  # idempotent: nothing rewritten
    tables = {p.stem: pd.read_csv(p) for p in out.glob("*.csv")}
    assert set(tables) == {"train", "val", f"test_{TEST_SET[name]}"}
    units = {w.unit for w in written}
    manifest = json.loads((out / "prepare.json").read_text())
    assert {u for split in manifest["subjects"].values() for u in split} == units
    assert sum(len(manifest["subjects"][s]) for s in ("train", "val", "test")) == len(units)

    dm = config_datamodule(name, out, tmp_path / "cache")
    dm.prepare_data()
    dm.setup()
    test = dm.splits.tests[TEST_SET[name]]
    images, masks, rois = (np.asarray(a)[:, 0] for a in (test.images, test.masks, test.rois))
    lesion = masks > 0
    assert test.labels.sum() > 0 and lesion.any()
    assert images[lesion].mean() > images[(rois > 0) & ~lesion].mean() + 0.3  # the mask is on the bright lesion
    assert (masks <= rois).all()
    assert len(dm.splits.train) > 0 and (np.asarray(dm.splits.train.masks) == 0).all()  # lesion-free slices only
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape[1:] == (1, 16, 16) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}


BREAKS = {"atlas": ("t1", "t1"), "mslub": ("t2", "flair"), "msseg2016": ("dp", "flair"), "msseg2015": ("pd", "flair")}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_broken_release_gives_one_clear_report(name, tmp_path):
    missing, corrupt = BREAKS[name]
    write = WRITERS[name]
    root = tmp_path / "release"
    good = release(name, root, n=3)
    rng = np.random.default_rng(1)
    bad_labels = LESION.astype(np.uint8)
    bad_labels[0, 0, 0] = 2
    broken = [write(root, 6, rng, skip=(missing,)), write(root, 7, rng, mask=bad_labels), write(root, 8, rng),
              write(root, 9, rng)]
    write_nifti(broken[2].files["mask"], np.zeros((10, 10, 10), np.uint8))
    broken[3].files[corrupt].write_bytes(b"not a nifti file")
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class(name)(root), out)
    report = str(error.value)
    expected = [f"missing {missing}", "unexpected label value(s) [2.0]", "shape (10, 10, 10)",
                f"unreadable image_{corrupt}"]
    for written, message in zip(broken, expected, strict=True):
        line = next((x for x in report.splitlines() if f"[{written.row}]" in x), "")
        assert message in line, (written.row, message, report)
    assert "No split CSV was written" in report and "--skip-invalid" in report
    assert not list(out.glob("*.csv"))
    assert main(["prepare", name, "--root", str(root), "--out", str(out)]) == 2  # the CLI says it, no traceback

    assert main(["prepare", name, "--root", str(root), "--out", str(out), "--skip-invalid"]) == 0
    manifest = json.loads((out / "prepare.json").read_text())
    assert sorted(manifest["skipped"]) == sorted(w.unit for w in broken)
    kept = {u for split in manifest["subjects"].values() for u in split}
    assert kept == {w.unit for w in good}


# ----------------------------------------------------------------------------------------------------- ATLAS
def test_atlas_ignores_testing_and_takes_one_brain_mask(tmp_path):
    root = tmp_path / "ATLAS_2"
    release("atlas", root, n=3)
    rng = np.random.default_rng(3)
    atlas_subject(root, 1, rng, cohort="R009", part="Testing")
    atlas_subject(root, 2, rng, cohort="R009", part="Testing")
    (root / "Training" / "20220425_ATLAS_2.0_MetaData.csv").write_text("ignored\n")
    out = tmp_path / "prepared"
    assert main(["prepare", "atlas", "--root", str(root), "--out", str(out)]) == 0
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["options"]["testing_subjects_ignored"] == 2 and manifest["options"]["read"] == "Training"
    assert manifest["pathology_split"] == {"test": 1.0} and manifest["groups"] == {
        "stroke": ["sub-r001s001", "sub-r001s002", "sub-r001s003"]}
    table = pd.read_csv(out / "test_stroke.csv")
    assert "roi" not in table.columns and Path(table["image_t1"][0]).name.endswith("_T1w.nii.gz")

    brain_mask = write_nifti(tmp_path / "tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz",
                             ellipsoid_fraction(SHAPE, 0.7).astype(np.uint8))
    assert main(["prepare", "atlas", "--root", str(root), "--out", str(out), "--set", f"brain_mask={brain_mask}"]) == 0
    table = pd.read_csv(out / "test_stroke.csv")
    assert set(table["roi"]) == {str(brain_mask)}
    # exact label mapping: the whole lesion, in every subject, lies in the brain roi
    arrays = native_grid_cache(out / "test_stroke.csv", "t1", tmp_path / "cache").open()
    assert int(np.asarray(arrays.masks).sum()) == 3 * LESION.sum()
    assert int(np.asarray(arrays.rois).sum()) == 3 * ellipsoid_fraction(SHAPE, 0.7).sum()

    wrong = write_nifti(tmp_path / "wrong_grid.nii.gz", np.ones((10, 10, 10), np.uint8))
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("atlas")(root, brain_mask=str(wrong)), tmp_path / "o")
    assert str(error.value).count("roi has shape (10, 10, 10)") == 3
    assert main(["prepare", "atlas", "--root", str(root), "--set", f"brain_mask={tmp_path / 'nowhere.nii.gz'}"]) == 2


def test_atlas_sessions_stray_files_and_missing_training(tmp_path):
    root = tmp_path / "ATLAS_2"
    release("atlas", root, n=2)
    rng = np.random.default_rng(4)
    atlas_subject(root, 1, rng, ses="ses-2")  # a second session of sub-r001s001
    subjects, problems = release_class("atlas")(root).scan()
    assert problems == []
    by_id = {s.id: s for s in subjects}
    assert sorted(by_id) == ["sub-r001s001_ses-1", "sub-r001s001_ses-2", "sub-r001s002"]
    assert by_id["sub-r001s001_ses-2"].patient == "sub-r001s001" and by_id["sub-r001s002"].patient is None
    assert by_id["sub-r001s002"].extra == {"cohort": "R001"} and set(by_id["sub-r001s002"].files) == {"image_t1",
                                                                                                      "mask"}
    write_nifti(root / "Training" / "R001" / "template.nii.gz", np.zeros((4, 4, 4), np.float32))
    anat = root / "Training" / "R001" / "sub-r001s002" / "ses-1" / "anat"
    write_nifti(anat / "sub-r001s002_ses-1_space-MNI152NLin2009aSym_T2w.nii.gz", np.zeros(SHAPE, np.float32))
    _, problems = release_class("atlas")(root).scan()
    assert len(problems) == 2
    by_name = {p.path.name: p for p in problems}
    assert by_name["sub-r001s002_ses-1_space-MNI152NLin2009aSym_T2w.nii.gz"].subject == "sub-r001s002"
    assert "unrecognised NIfTI file" in by_name["sub-r001s002_ses-1_space-MNI152NLin2009aSym_T2w.nii.gz"].message
    assert by_name["template.nii.gz"].subject is None  # belongs to no subject: stops prepare even with --skip-invalid
    assert by_name["template.nii.gz"].message == "NIfTI file outside the Training/R###/sub-*/ses-*/anat/ layout"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleaseError, match="no Training/ folder"):
        prepare(release_class("atlas")(tmp_path / "empty"), tmp_path / "o")


# ----------------------------------------------------------------------------------------------------- MSLUB
def test_mslub_reads_the_coregistered_variant_of_each_layout(tmp_path):
    rng = np.random.default_rng(5)
    inside = tmp_path / "inside"  # patientNN/{raw,coregistered}/
    for i in (1, 2):
        mslub_patient(inside, i, rng, variant="raw")
        mslub_patient(inside, i, rng, variant="coregistered")
    scanner = release_class("mslub")(inside)
    subjects, problems = scanner.scan()
    assert problems == [] and [s.id for s in subjects] == ["patient01", "patient02"]
    assert all(p.parent.name == "coregistered" for s in subjects for p in s.files.values())
    assert set(subjects[0].files) == {"image_flair", "image_t1", "image_t1ks", "image_t2", "mask", "roi"}
    assert subjects[0].files["roi"].name == "brainmask.nii.gz" and subjects[0].group == "ms"
    assert scanner.options()["read"] == "coregistered" and scanner.options()["ignored_files"] == {"raw": 10}

    above = tmp_path / "above"  # {coregistered,raw}/patientNN/ (public mirror), and flat patient folders
    mslub_patient(above, 1, rng, variant="coregistered", above=True)
    mslub_patient(above, 1, rng, variant="raw", above=True)
    flat = tmp_path / "flat"
    mslub_patient(flat, 3, rng, variant="")
    for root, read in ((above, "coregistered"), (flat, "patient folder")):
        scanner = release_class("mslub")(root)
        subjects, problems = scanner.scan()
        assert problems == [] and len(subjects) == 1 and scanner.read == read

    # raw images are in their own spaces: with every modality the grids are reported, FLAIR alone prepares
    for i in (1, 2):
        write_nifti(inside / f"patient{i:02d}" / "raw" / "T1W.nii.gz", np.zeros((20, 20, 20), np.float32))
    with pytest.raises(ReleaseError, match=r"image_t1 has shape \(20, 20, 20\) but image_flair has"):
        prepare(release_class("mslub")(inside, variant="raw"), tmp_path / "o")
    assert main(["prepare", "mslub", "--root", str(inside), "--out", str(tmp_path / "raw"), "--set", "variant=raw",
                 "--modalities", "flair"]) == 0
    table = pd.read_csv(tmp_path / "raw" / "test_ms.csv")
    assert list(table.columns) == ["subject", "image_flair", "mask"] and "/raw/" in table["image_flair"][0]
    assert json.loads((tmp_path / "raw" / "prepare.json").read_text())["options"]["read"] == "raw"
    assert main(["prepare", "mslub", "--root", str(inside), "--set", "variant=nope"]) == 2


def test_mslub_unplaced_files_are_problems(tmp_path):
    root = tmp_path / "MSLUB"
    release("mslub", root, n=2)
    write_nifti(root / "patient01" / "coregistered" / "notes.nii.gz", np.zeros((4, 4, 4), np.float32))
    write_nifti(root / "atlas.nii.gz", np.zeros((4, 4, 4), np.float32))
    (root / "patient03" / "raw").mkdir(parents=True)
    write_nifti(root / "patient03" / "raw" / "FLAIR.nii.gz", np.zeros(SHAPE, np.float32))
    _, problems = release_class("mslub")(root).scan()
    messages = sorted(str(p) for p in problems)
    assert len(messages) == 3, messages
    assert any(m.startswith("[patient01]") and "notes.nii.gz: unrecognised NIfTI file" in m for m in messages)
    assert "[patient03]: no coregistered files (found: raw)" in messages
    assert any(m.endswith("atlas.nii.gz: NIfTI file outside a patientNN folder (or its raw / preprocessed / "
                          "coregistered sub-folder)") for m in messages)


# ------------------------------------------------------------------------------------------------ MS-SEG 2016
def test_msseg2016_keeps_testing_as_the_official_test_split(tmp_path):
    root = tmp_path / "MSSEG2016"
    release("msseg2016", root, n=4)
    rng = np.random.default_rng(6)
    msseg2016_patient(root, 1, rng, part="Testing", center=3)
    msseg2016_patient(root, 1, rng, part="Testing", center=1)  # same numbers as a training patient
    out = tmp_path / "prepared"
    assert main(["prepare", "msseg2016", "--root", str(root), "--out", str(out),
                 "--pathology-split", "train=0.5,val=0.25,test=0.25"]) == 0
    manifest = json.loads((out / "prepare.json").read_text())
    test = manifest["subjects"]["test"]  # the Testing patients, and one of the 4 training ones (0.25)
    assert {"Testing_Center_01_Patient_01", "Testing_Center_03_Patient_01"} <= set(test) and len(test) == 3
    assert len(manifest["subjects"]["train"]) == 2 and len(manifest["subjects"]["val"]) == 1
    assert manifest["options"]["ignored"] == {"Raw_Data files": 6}
    row = pd.read_csv(out / "test_ms.csv").set_index("subject").loc["Testing_Center_03_Patient_01"]
    assert Path(row["mask"]).name == "Consensus.nii.gz" and Path(row["roi"]).name == "Brain_Mask.nii.gz"
    assert Path(row["image_dp"]).name == "DP_preprocessed.nii.gz" and "/Testing/Center_03/" in row["image_dp"]

    assert main(["prepare", "msseg2016", "--root", str(root), "--out", str(out), "--set", "parts=training"]) == 0
    manifest = json.loads((out / "prepare.json").read_text())
    assert len(manifest["subjects"]["test"]) == 4 and manifest["options"]["parts"] == ["training"]
    assert manifest["options"]["ignored"] == {"Raw_Data files": 4, "Testing patients": 2}
    assert main(["prepare", "msseg2016", "--root", str(root), "--set", "parts=validation"]) == 2


def test_msseg2016_blinded_testing_and_unknown_files(tmp_path):
    root = tmp_path / "MSSEG2016"
    release("msseg2016", root, n=2)
    folder = root / "Testing" / "Center_03" / "Patient_01" / "Preprocessed_Data"
    for kind in ("FLAIR", "T1", "T2", "DP", "GADO"):
        write_nifti(folder / f"{kind}_preprocessed.nii.gz", np.zeros(SHAPE, np.float32))
    write_nifti(root / "Training" / "Center_01" / "Patient_01" / "Segmentation" / "x.nii.gz",
                np.zeros(SHAPE, np.uint8))
    write_nifti(root / "Training" / "Center_01" / "Patient_02" / "extra.nii.gz", np.zeros(SHAPE, np.uint8))
    write_nifti(root / "Training" / "Center_01" / "Patient_02" / "Raw_Data" / "dicom" / "x.nii", np.zeros((2, 2, 2)))
    scanner = release_class("msseg2016")(root)
    _, problems = scanner.scan()
    messages = sorted(str(p) for p in problems)
    assert len(messages) == 3, messages
    assert messages[0].startswith("[Center_01_Patient_01]") and "unknown sub-folder 'Segmentation'" in messages[0]
    assert messages[1].startswith("[Center_01_Patient_02]") and "not directly in a sub-folder" in messages[1]
    assert messages[2].startswith("[Testing_Center_03_Patient_01]") and "missing Masks/Consensus" in messages[2]
    assert scanner.options()["ignored"] == {"Raw_Data files": 3}


# ------------------------------------------------------------------------------------------------ MS-SEG 2015
def test_msseg2015_time_points_of_a_patient_share_a_split(tmp_path):
    root = tmp_path / "ISBI2015"
    rng = np.random.default_rng(7)
    for i in range(1, 6):
        msseg2015_patient(root, i, rng, points=2 + i % 2)
    msseg2015_patient(root, 1, rng, part="testdata_website", prefix="test")
    msseg2015_patient(root, 2, rng, part="testdata_website", prefix="test")
    out = tmp_path / "prepared"
    assert main(["prepare", "msseg2015", "--root", str(root), "--out", str(out),
                 "--pathology-split", "train=0.4,val=0.2,test=0.4"]) == 0
    manifest = json.loads((out / "prepare.json").read_text())
    assert [len(manifest["subjects"][s]) for s in ("train", "val", "test")] == [2, 1, 2]
    for split, stem in (("train", "train"), ("val", "val"), ("test", "test_ms")):
        rows = pd.read_csv(out / f"{stem}.csv")["subject"]
        assert {r.rsplit("_", 1)[0] for r in rows} == set(manifest["subjects"][split])  # whole patients
        for patient in manifest["subjects"][split]:
            assert sum(r.startswith(patient + "_") for r in rows) == 2 + int(patient[-2:]) % 2  # all time points
    assert manifest["options"]["ignored"] == {"orig files": 13, "testdata_website patients": 2}
    row = pd.read_csv(out / "test_ms.csv").iloc[0]
    assert Path(row["image_t1"]).name.endswith("_mprage_pp.nii") and Path(row["mask"]).name.endswith("_mask1.nii")


def test_msseg2015_rater_masks(tmp_path):
    root = tmp_path / "ISBI2015"
    rng = np.random.default_rng(8)
    for i in (1, 2):
        msseg2015_patient(root, i, rng)
    subjects, problems = release_class("msseg2015")(root, rater="2").scan()
    assert problems == [] and all(s.files["mask"].name.endswith("_mask2.nii") for s in subjects)
    assert [(s.id, s.patient) for s in subjects] == [("training01_01", "training01"), ("training01_02", "training01"),
                                                     ("training02_01", "training02"), ("training02_02", "training02")]
    expected = {"1": LESION.sum(), "2": SECOND_RATER.sum(), "union": (LESION | SECOND_RATER).sum(),
                "intersection": (LESION & SECOND_RATER).sum()}
    assert expected["union"] > expected["1"] > expected["intersection"] > 0
    for rater, count in expected.items():
        out = tmp_path / rater
        command = ["prepare", "msseg2015", "--root", str(root), "--out", str(out), "--set", f"rater={rater}"]
        assert main(command) == 0
        derived = sorted((out / "derived_masks").glob("*.nii.gz"))
        assert len(derived) == (4 if rater in ("union", "intersection") else 0)
        if derived:
            before = snapshot(out)
            assert main(command) == 0
            assert snapshot(out) == before  # derived masks are rewritten only when their content changes
        cache = native_grid_cache(out / "test_ms.csv", "flair", tmp_path / "cache")
        assert int(np.asarray(cache.open().masks).sum()) == 4 * count, rater  # padded, not resampled: exact
    manifest = json.loads((tmp_path / "union" / "prepare.json").read_text())
    assert manifest["options"]["rater"] == "union"
    assert manifest["options"]["derived_masks"] == str((tmp_path / "union" / "derived_masks").resolve())

    # a rater mask with a stray label is reported (union reads both raters' masks itself)
    bad = SECOND_RATER.astype(np.uint8)
    bad[0, 0, 0] = 2
    write_nifti(root / "training" / "training02" / "masks" / "training02_02_mask2.nii", bad)
    with pytest.raises(ReleaseError, match=r"\[training02_02\].*mask2\.nii: mask has unexpected label value"):
        prepare(release_class("msseg2015")(root, rater="union"), tmp_path / "bad")
    with pytest.raises(ReleaseError, match="derives masks below the prepare output folder"):
        release_class("msseg2015")(root, rater="intersection").scan()
    assert main(["prepare", "msseg2015", "--root", str(root), "--set", "rater=3"]) == 2
