"""FastMRI+ adapter: a miniature brain_mid_png export with a FastMRI+ annotation table, prepared and loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from benchmark.cli import main
from benchmark.config import CONFIG_DIR
from datamodules.nifti import NiftiDataModule
from datamodules.releases import release_class
from datamodules.releases.base import ReleaseError, prepare
from tests.releases import ellipsoid_fraction, snapshot, write_png

W, H = 40, 32  # PNG width x height: not square, catches swapped axes
HEADER = "file,slice,study_level,x,y,width,height,label"
STEM = "file_brain_AXT1_201_{:07d}"
# file -> (slice in the PNG name or None, [(slice, x, y, width, height, label, drawn bright)])
A, B, C = STEM.format(1), STEM.format(2), STEM.format(3)
STUDY, OTHER_SLICE, UNMAPPED = STEM.format(4), STEM.format(5), STEM.format(6)
EDEMA = (5, 4, 6, 5, 4, "Edema")  # slice, x, y, width, height, label
MASS = (5, 20, 10, 6, 7, "Mass")
ARTEFACT = (5, 30, 20, 3, 3, "Possible artifact")
WML = [(2, 10, 5, 3, 2, "Nonspecific white matter lesion"), (2, 25, 15, 2, 4, "nonspecific  white matter LESION")]
MASSES = [(7, 3, 3, 4, 4, "Mass"), (7, 30, 22, 5, 3, "Extra-axial mass")]


def brain_image(rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W]: a textured ellipse of tissue (100..180) on a zero background."""
    inside = ellipsoid_fraction((H, W), 0.9)
    return np.where(inside, rng.integers(100, 180, (H, W)), 0).astype(np.uint8)


def draw(image: np.ndarray, boxes, bright=True) -> np.ndarray:
    for _, x, y, w, h, label in boxes:
        image[y:y + h, x:x + w] = 255 if bright and "artifact" not in label else 40
    return image


def box_mask(boxes, shape=(H, W)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for _, x, y, w, h, _ in boxes:
        mask[y:y + h, x:x + w] = True
    return mask


def rows(file: str, boxes) -> list[str]:
    return [f"{file},{s},No,{x},{y},{w},{h},{label}" for s, x, y, w, h, label in boxes]


def fastmri_release(root: Path, n_healthy: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "brain_mid_png"
    for i in range(n_healthy):
        write_png(folder / f"{STEM.format(100 + i)}.png", brain_image(rng))
    write_png(folder / f"{A}_5.png", draw(brain_image(rng), [EDEMA, MASS, ARTEFACT]))  # slice in the name
    write_png(folder / f"{B}.png", draw(brain_image(rng), WML))  # slice in slices.csv
    write_png(folder / f"{C}_7.png", draw(brain_image(rng), MASSES))
    for file in (STUDY, OTHER_SLICE, UNMAPPED):
        write_png(folder / f"{file}_3.png", brain_image(rng))
    (folder / ".DS_Store").write_bytes(b"\0\1")  # not a PNG: ignored
    table = [HEADER, *rows(A, [EDEMA, MASS, ARTEFACT, (4, 1, 1, 2, 2, "Edema")]), f"{A},0,Yes,,,,,Normal for age",
             *rows(B, WML), *rows(C, MASSES), f"{STUDY},0,Yes,,,,,Small vessel chronic white matter ischemic change",
             *rows(OTHER_SLICE, [(9, 5, 5, 3, 3, "Edema")]), *rows(UNMAPPED, [(3, 5, 5, 3, 3, "Lacunar infarct")]),
             *rows("file_brain_AXFLAIR_200_6002425", [(2, 91, 132, 7, 6, "Nonspecific white matter lesion")])]
    (root / "brain.csv").write_text("\n".join(table) + "\n")
    (root / "slices.csv").write_text(f"file,slice\n{B},2\n{A},5\n")
    return root


def read_png(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_prepare_groups_masks_rois_and_is_idempotent(tmp_path):
    root = fastmri_release(tmp_path / "fastmri_brain")
    out = tmp_path / "prepared"
    assert main(["prepare", "fastmri", "--root", str(root), "--out", str(out)]) == 0
    tables = {p.stem: pd.read_csv(p, dtype=str, keep_default_na=False) for p in out.glob("*.csv")}
    assert {k: len(v) for k, v in tables.items()} == {"train": 9, "val": 1, "test_healthy": 2, "test_edema": 1,
                                                      "test_mass_all": 2, "test_wml": 1}
    healthy = [s for k in ("train", "val", "test_healthy") for s in tables[k]["subject"]]
    assert sorted(healthy) == [STEM.format(100 + i) for i in range(12)]
    assert tables["test_mass_all"]["subject"].tolist() == [A, C] and tables["test_edema"]["subject"].tolist() == [A]
    edema = tables["test_edema"].iloc[0]
    assert Path(edema["image_t1"]) == (root / "brain_mid_png" / f"{A}_5.png").resolve()
    assert Path(edema["mask"]) == out / "masks" / f"{A}_edema.png"
    assert "roi" not in tables["train"] or not tables["train"]["roi"].any()  # no brain masks: the whole image

    # masks: the union of the set's boxes (0/255); rois: the image minus the boxes of every other finding
    np.testing.assert_array_equal(read_png(edema["mask"]) > 0, box_mask([EDEMA]))
    np.testing.assert_array_equal(read_png(edema["roi"]) > 0, ~box_mask([MASS, ARTEFACT]))
    mass_a = tables["test_mass_all"].set_index("subject").loc[A]
    np.testing.assert_array_equal(read_png(mass_a["mask"]) > 0, box_mask([MASS]))
    np.testing.assert_array_equal(read_png(mass_a["roi"]) > 0, ~box_mask([EDEMA, ARTEFACT]))
    mass_c = tables["test_mass_all"].set_index("subject").loc[C]
    assert int((read_png(mass_c["mask"]) > 0).sum()) == 4 * 4 + 5 * 3 and not mass_c["roi"]  # nothing else there
    assert int((read_png(tables["test_wml"].iloc[0]["mask"]) > 0).sum()) == 3 * 2 + 2 * 4  # labels case-folded

    manifest = json.loads((out / "prepare.json").read_text())
    options = manifest["options"]
    assert options["excluded"] == {"study_level_only": 1, "no_box_on_slice": 1, "unmapped_labels_only": 1,
                                   "not_reviewed": 0}
    assert options["excluded_files"] == {"study_level_only": [STUDY], "no_box_on_slice": [OTHER_SLICE],
                                         "unmapped_labels_only": [UNMAPPED]}
    assert options["unmapped_boxes"] == {"Lacunar infarct": 1, "Possible artifact": 1}
    assert manifest["groups"]["mass_all"] == [A, C] and manifest["subjects"]["test"] == sorted(
        [A, B, C, *tables["test_healthy"]["subject"]])

    before = snapshot(out)
    assert main(["prepare", "fastmri", "--root", str(root), "--out", str(out)]) == 0
    assert snapshot(out) == before


def dataset_from_config(out: Path, tmp_path: Path, sets: list[str], **overrides) -> NiftiDataModule:
    config = yaml.safe_load((CONFIG_DIR / "datasets" / "fastmri.yaml").read_text())
    args = config["init_args"]
    assert set(args["test_csvs"]) == {"healthy", "absent_septum", "craniatomy", "dural", "edema", "encephalomalacia",
                                      "enlarged_ventricles", "intraventricular", "lesions", "posttreatment",
                                      "resection", "sinus", "wml", "mass_all"}
    assert (args["modality"], args["intensity_window"], args["image_size"]) == ("t1", [0, 255], 128)
    assert args["crop_to_roi"] is False and args["zero_outside_roi"] is False
    for key in ("train_csv", "val_csv"):
        args[key] = str(out / args[key].removeprefix("data/fastmri/"))
    args["test_csvs"] = {name: str(out / args["test_csvs"][name].removeprefix("data/fastmri/")) for name in sets}
    args.update(cache_dir=str(tmp_path / "cache"), image_size=max(W, H), progress=False, **overrides)
    return NiftiDataModule(**args)


def test_batches_from_the_config_align_masks_with_the_boxes(tmp_path):
    root = fastmri_release(tmp_path / "release")
    out = tmp_path / "prepared"
    prepare(release_class("fastmri")(root), out)
    dm = dataset_from_config(out, tmp_path, ["healthy", "edema", "mass_all", "wml"])
    dm.prepare_data()
    dm.setup()
    tests = dm.splits.tests
    # padded to a 40 px square, not resampled: exact pixel counts and values = PNG / 255
    for name, areas in (("edema", [4 * 5]), ("mass_all", [6 * 7, 4 * 4 + 5 * 3]), ("wml", [3 * 2 + 2 * 4])):
        arrays = tests[name]
        images, masks, rois = (np.asarray(a)[:, 0] for a in (arrays.images, arrays.masks, arrays.rois))
        assert masks.reshape(len(masks), -1).sum(1).tolist() == areas, name
        assert (images[masks > 0] == 1.0).all(), name  # every mask pixel sits on a bright (255) box pixel
        assert images[(rois > 0) & (masks == 0)].max() < 1.0, name  # no other bright box is healthy tissue
        assert (masks <= rois).all() and (arrays.labels == 1).all(), name
    edema = tests["edema"]
    assert int((np.asarray(edema.rois)[0, 0] == 0).sum()) == 40 * 40 - W * H + 6 * 7 + 3 * 3  # padding + others
    healthy = tests["healthy"]
    assert (np.asarray(healthy.masks) == 0).all() and (healthy.labels == 0).all()
    raw = read_png(root / "brain_mid_png" / f"{healthy.subjects[0]}.png") / 255.0
    image = np.asarray(healthy.images)[0, 0]
    rows, cols = np.nonzero(image.sum(1) > 0)[0], np.nonzero(image.sum(0) > 0)[0]
    np.testing.assert_allclose(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1],
                               raw[np.ix_(np.nonzero(raw.sum(1))[0], np.nonzero(raw.sum(0))[0])], atol=1e-6)
    assert len(dm.splits.train) == 9 and len(dm.splits.val) == 1
    batch = next(iter(dm.test_dataloader()[1]))
    assert batch["image"].shape[1:] == (1, 40, 40) and batch["subject"] == [A]


def test_flip_box_grid_brain_masks_and_foreground(tmp_path):
    root = tmp_path / "release"
    rng = np.random.default_rng(3)
    brain = brain_image(rng)
    write_png(root / "brain_mid_png" / f"{A}_1.png", brain)
    write_png(root / "brain_mid_png" / f"{B}.png", brain_image(rng))
    # boxes on an 80 x 64 grid (twice the PNG), on the flipped picture
    (root / "brain.csv").write_text("\n".join([HEADER, *rows(A, [(1, 8, 12, 10, 6, "Edema"),
                                                                 (1, 60, 2, 8, 8, "Paranasal sinus opacification")])]))
    out = tmp_path / "out"
    prepare(release_class("fastmri")(root, flip="true", box_grid="80x64"), out)
    edema, sinus = np.zeros((H, W), bool), np.zeros((H, W), bool)
    edema[H - 9:H - 6, 4:9] = True  # rows 6..9 of 32 mirrored, columns 4..9
    sinus[H - 5:H - 1, 30:34] = True
    np.testing.assert_array_equal(read_png(out / "masks" / f"{A}_edema.png") > 0, edema)
    np.testing.assert_array_equal(read_png(out / "masks" / f"{A}_sinus.png") > 0, sinus)

    # brain masks: roi = brain minus the other findings, plus the set's own boxes (the sinus lies outside the brain)
    inside = ellipsoid_fraction((H, W), 0.6)
    for file in (A, B):
        write_png(root / "brain_masks" / f"{file}.png", inside.astype(np.uint8) * 255)
    prepare(release_class("fastmri")(root, flip="true", box_grid="80x64"), out)
    np.testing.assert_array_equal(read_png(out / "rois" / f"{A}_sinus.png") > 0, (inside & ~edema) | sinus)
    np.testing.assert_array_equal(read_png(out / "rois" / f"{A}_edema.png") > 0, (inside & ~sinus) | edema)
    train = pd.concat(pd.read_csv(p) for p in out.glob("*.csv") if "healthy" in p.stem or p.stem in ("train", "val"))
    assert train["roi"].tolist() == [str(root.resolve() / "brain_masks" / f"{B}.png")]

    # foreground: the filled non-zero region (no brain mask folder), for healthy images too
    (root / "brain_masks" / f"{A}.png").unlink()
    (root / "brain_masks" / f"{B}.png").unlink()
    (root / "brain_masks").rmdir()
    prepare(release_class("fastmri")(root, flip="true", box_grid="80x64", foreground_roi="true"), out)
    foreground = ellipsoid_fraction((H, W), 0.9)
    np.testing.assert_array_equal(read_png(out / "rois" / f"{A}_edema.png") > 0, (foreground & ~sinus) | edema)
    assert (read_png(out / "rois" / f"{B}_healthy.png") > 0).sum() == foreground.sum()


def test_broken_release_gives_one_clear_report(tmp_path):
    root = fastmri_release(tmp_path / "release", n_healthy=4)
    folder = root / "brain_mid_png"
    rng = np.random.default_rng(5)
    bad = {name: STEM.format(200 + i) for i, name in enumerate(
        ("unknown", "outside", "no_slice", "disagree", "unreadable", "mode", "twice", "no_mask"))}
    table = [*rows(bad["unknown"], [(1, 2, 2, 3, 3, "Subdural hygroma")]),
             *rows(bad["outside"], [(1, 38, 2, 5, 3, "Edema")]),
             *rows(bad["no_slice"], [(1, 2, 2, 3, 3, "Edema")]),
             *rows(bad["disagree"], [(1, 2, 2, 3, 3, "Edema")])]
    with open(root / "brain.csv", "a") as handle:
        handle.write("\n".join(table) + "\n")
    with open(root / "slices.csv", "a") as handle:
        handle.write(f"{bad['disagree']},2\n")
    for key in ("unknown", "outside", "disagree", "twice"):
        write_png(folder / f"{bad[key]}_1.png", brain_image(rng))
    write_png(folder / f"{bad['no_slice']}.png", brain_image(rng))
    write_png(folder / f"{bad['twice']}.png", brain_image(rng))
    (folder / f"{bad['unreadable']}.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.fromarray(brain_image(rng).astype(np.uint16) * 200).save(folder / f"{bad['mode']}.png")
    write_png(folder / "file_brain_AXFLAIR_200_6002425_2.png", brain_image(rng))  # another acquisition
    write_png(folder / "mid_slice_001.png", brain_image(rng))  # not a fastMRI name
    out = tmp_path / "prepared"
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("fastmri")(root), out)
    report = str(error.value)
    for expected in (f"[{bad['unknown']}]", "unknown FastMRI+ label(s) ['Subdural hygroma']",
                     f"[{bad['outside']}]", "lies outside the 40x32 image",
                     f"[{bad['no_slice']}]", "the slice this PNG shows is unknown",
                     f"[{bad['disagree']}]", "says slice 1 but slices.csv says 2",
                     f"[{bad['unreadable']}]", "unreadable image", f"[{bad['mode']}]", "PNG mode I",
                     f"[{bad['twice']}]", "2 PNGs for one volume",
                     "[file_brain_AXFLAIR_200_6002425]", "acquisition AXFLAIR is not selected",
                     "[mid_slice_001]", "not a fastMRI file stem", "No split CSV was written"):
        assert expected in report, expected
    assert not list(out.glob("*.csv"))
    assert main(["prepare", "fastmri", "--root", str(root), "--out", str(out)]) == 2

    result = prepare(release_class("fastmri")(root), out, skip_invalid=True)
    expected_bad = {v for k, v in bad.items() if k != "no_mask"} | {"file_brain_AXFLAIR_200_6002425",
                                                                     "mid_slice_001"}
    assert set(result.skipped) == expected_bad
    prepared = {s for p in out.glob("*.csv") for s in pd.read_csv(p)["subject"]}
    assert prepared == {A, B, C, *(STEM.format(100 + i) for i in range(4))}

    # brain masks: one missing, one without an image, one not binary
    masks = root / "brain_masks"
    for file in [A, B, C, *(STEM.format(100 + i) for i in range(3))]:
        write_png(masks / f"{file}.png", ellipsoid_fraction((H, W), 0.7).astype(np.uint8) * 255)
    write_png(masks / f"{bad['no_mask']}.png", np.zeros((H, W), np.uint8))
    write_png(masks / f"{C}.png", np.full((H, W), 7, np.uint8))
    with pytest.raises(ReleaseError) as error:
        prepare(release_class("fastmri")(root), out)
    report = str(error.value)
    assert f"[{STEM.format(103)}]" in report and "brain mask missing" in report
    assert f"[{bad['no_mask']}]" in report and "brain mask without an image" in report
    assert f"[{C}]" in report and "brain mask is not binary" in report


def test_reviewed_list_clip_boxes_and_option_errors(tmp_path):
    root = fastmri_release(tmp_path / "release", n_healthy=4)
    reviewed = [STEM.format(100 + i) for i in range(3)]  # 103 was never reviewed: not healthy
    (root / "brain_file_list.csv").write_text("\n".join(reviewed) + "\n")
    with open(root / "brain.csv", "a") as handle:
        handle.write(f"{B},2,No,38,30,4,4,Edema\n")  # crosses the right and bottom border
    out = tmp_path / "out"
    with pytest.raises(ReleaseError, match="lies outside the 40x32 image"):
        prepare(release_class("fastmri")(root), out)
    prepare(release_class("fastmri")(root, clip_boxes="true"), out)
    assert int((read_png(out / "masks" / f"{B}_edema.png") > 0).sum()) == 2 * 2
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["options"]["excluded"]["not_reviewed"] == 1
    assert manifest["options"]["excluded_files"]["not_reviewed"] == [STEM.format(103)]
    assert sorted(manifest["groups"]["healthy"]) == reviewed

    assert main(["prepare", "fastmri", "--root", str(root), "--out", str(out), "--set", "flip=maybe"]) == 2
    assert main(["prepare", "fastmri", "--root", str(root), "--out", str(out), "--set", "box_grid=big"]) == 2
    assert main(["prepare", "fastmri", "--root", str(root), "--out", str(out), "--set", "slices=nope.csv"]) == 2
    assert main(["prepare", "fastmri", "--root", str(root), "--out", str(out), "--set",
                 "annotations=elsewhere.csv"]) == 2
    moved = tmp_path / "labels" / "fastmri_plus_brain.csv"  # the annotation table elsewhere
    moved.parent.mkdir()
    (root / "brain.csv").rename(moved)
    prepare(release_class("fastmri")(root, clip_boxes="true", annotations=str(moved)), out)
    assert json.loads((out / "prepare.json").read_text())["options"]["annotations"] == str(moved)
    (root / "brain.csv").write_text("file,slice,label\n")
    with pytest.raises(ReleaseError, match=r"missing column\(s\) \['study_level', 'x'"):
        prepare(release_class("fastmri")(root), out)
    (root / "brain.csv").unlink()
    with pytest.raises(ReleaseError, match=r"annotation table .* not found"):
        prepare(release_class("fastmri")(root), out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleaseError, match=r"no folder .*brain_mid_png"):
        prepare(release_class("fastmri")(tmp_path / "empty"), out)


def test_healthy_split_is_genai_131_15_30():
    from datamodules.releases.base import Subject, assign_splits, parse_fractions

    release = release_class("fastmri")
    subjects = [Subject(id=STEM.format(i), group="healthy", files={}) for i in range(176)]
    assigned = assign_splits(subjects, parse_fractions(release.healthy_split, "healthy"),
                             parse_fractions(release.pathology_split, "pathology"), seed=0)
    assert list(assigned.values()).count("train") == 131
    assert list(assigned.values()).count("val") == 15 and list(assigned.values()).count("test") == 30
    assert release.pathology_split == {"test": 1.0}
