"""OASIS-1 PNG slices: the course-provided ``keras_png_slices_data`` export used by the DCGAN reference check.

256 x 256 8-bit grayscale axial slices of OASIS-1 T1 brains, already split into train / validate / test folders
(kept as the official ``train`` / ``val`` / ``test`` splits), with a tissue segmentation PNG per slice whose values
are 0, 85, 170 and 255. Which tissue each value is is [UNVERIFIED]; the usual reading, and the one implemented
here, is 0 background and 85 / 170 / 255 brain tissue (CSF / grey matter / white matter), so the roi is every
non-background value (``roi_labels`` 85 170 255).

One split row per slice (``case_001_slice_0``); the case (``case_001``) is the split unit, so a case found in two
split folders is a problem of that case. All subjects are healthy: the release gives generative / normative
checks (train, val and ``test_healthy.csv``), not a lesion test set.

Option ``segmentations`` (``prepare oasis --set segmentations=false``): true (default) requires the segmentation
of every slice and writes it as the roi; false ignores the segmentation folders (counted in prepare.json) and
writes no roi, for copies that only hold the image folders. A slice whose segmentation is all background (no brain
to normalise or evaluate in) is left out and listed in prepare.json's options.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from datamodules.releases.base import HEALTHY, Problem, Release, ReleaseError, Subject

LAYOUT = """\
  ROOT/                                        (often keras_png_slices_data/; searched recursively)
    keras_png_slices_train/case_001_slice_0.nii.png ...        -> split train
    keras_png_slices_validate/case_402_slice_0.nii.png ...     -> split val
    keras_png_slices_test/case_441_slice_0.nii.png ...         -> split test (test_healthy.csv)
    keras_png_slices_seg_train/seg_001_slice_0.nii.png ...     (tissue labels 0 / 85 / 170 / 255; same for
    keras_png_slices_seg_validate/, keras_png_slices_seg_test/  validate and test)
  Files that are not PNG, hidden files and __MACOSX folders are ignored; any other PNG is reported."""

FOLDER_SPLITS = {"train": "train", "validate": "val", "test": "test"}
_FOLDER = re.compile(r"^keras_png_slices_(?P<seg>seg_)?(?P<split>train|validate|test)$")
_IMAGE = re.compile(r"^case_(?P<case>\d+)_slice_(?P<slice>\d+)\.nii\.png$")
_SEGMENTATION = re.compile(r"^seg_(?P<case>\d+)_slice_(?P<slice>\d+)\.nii\.png$")
TISSUE = (85, 170, 255)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _flag(value: str | bool, what: str) -> bool:
    """A boolean option given as a bool or as ``--set key=true|false``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ReleaseError(f"OASIS option {what}={value!r}: write true or false")
    return text in _TRUE


def _ignored(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _empty(path: Path) -> bool:
    """Whether a segmentation PNG is all background; unreadable files count as not empty (check_subject says why)."""
    try:
        with Image.open(path) as picture:
            return picture.getbbox() is None
    except (OSError, ValueError):
        return False


class OASISRelease(Release):
    name = "oasis"
    title = "OASIS-1 PNG slices (keras_png_slices_data)"
    layout = LAYOUT
    modalities = ("t1",)
    mask_values = frozenset({0, 1})  # no lesion masks are written
    roi_values = frozenset({0, *TISSUE})

    def __init__(self, root: str | Path, modalities=None, segmentations: str | bool = True) -> None:
        super().__init__(root, modalities)
        self.segmentations = _flag(segmentations, "segmentations")
        self.ignored_segmentations = 0
        self.empty_segmentations: list[str] = []

    def options(self) -> dict[str, object]:
        options = {**super().options(), "segmentations": self.segmentations}
        if not self.segmentations:
            options["segmentations_ignored"] = self.ignored_segmentations
        if self.empty_segmentations:
            options["empty_segmentations_left_out"] = self.empty_segmentations
        return options

    def _folders(self) -> tuple[dict[tuple[bool, str], Path], list[Problem], list[Path]]:
        """(is segmentation, split folder word) -> folder; problems; PNGs outside the split folders."""
        folders: dict[tuple[bool, str], Path] = {}
        problems, stray = [], []
        for path in sorted(self.root.rglob("*")):
            if _ignored(path, self.root):
                continue
            match = _FOLDER.match(path.name) if path.is_dir() else None
            if match is not None:
                key = (match["seg"] is not None, match["split"])
                if key in folders:
                    problems.append(Problem(f"two {path.name} folders ({folders[key]} and {path}); keep one copy "
                                            "of the release", None, path))
                else:
                    folders[key] = path
            elif path.is_file() and path.suffix.lower() == ".png" and not _FOLDER.match(path.parent.name):
                stray.append(path)
        return folders, problems, stray

    @staticmethod
    def _slices(folder: Path, pattern: re.Pattern[str]) -> tuple[dict[str, Path], list[Problem]]:
        """Row id (``case_001_slice_0``) -> PNG of one split folder; a problem for every other PNG there."""
        found, problems = {}, []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file() or path.suffix.lower() != ".png":
                continue
            match = pattern.match(path.name)
            if match is None:
                problems.append(Problem(f"unrecognised PNG in {folder.name} (expected {pattern.pattern})", None,
                                        path))
                continue
            found[f"case_{match['case']}_slice_{match['slice']}"] = path
        return found, problems

    def scan(self) -> tuple[list[Subject], list[Problem]]:
        self.ignored_segmentations, self.empty_segmentations = 0, []
        folders, problems, stray = self._folders()
        problems += [Problem("PNG outside the keras_png_slices_* folders", None, path) for path in stray]
        rows: list[tuple[str, str, Path, Path | None]] = []  # (row id, split, image, segmentation)
        for word in FOLDER_SPLITS:
            found, more = self._split_rows(word, folders)
            rows += found
            problems += more
        conflicts = self._split_conflicts(rows)
        return self._subjects(rows, {p.subject for p in conflicts}), problems + conflicts

    def _split_rows(self, word: str, folders: dict[tuple[bool, str], Path]
                    ) -> tuple[list[tuple[str, str, Path, Path | None]], list[Problem]]:
        """The rows of one split folder (with their segmentations) and the problems met there."""
        image_folder, seg_folder = folders.get((False, word)), folders.get((True, word))
        if seg_folder is not None and not self.segmentations:
            self.ignored_segmentations += len(self._slices(seg_folder, _SEGMENTATION)[0])
            seg_folder = None
        if image_folder is None:
            return [], [] if seg_folder is None else [Problem(
                f"segmentation folder without its image folder keras_png_slices_{word}", None, seg_folder)]
        if seg_folder is None and self.segmentations:
            return [], [Problem(f"no keras_png_slices_seg_{word} folder beside it: every slice needs its "
                                "segmentation (or prepare with --set segmentations=false)", None, image_folder)]
        images, problems = self._slices(image_folder, _IMAGE)
        segmentations: dict[str, Path] = {}
        if seg_folder is not None:
            segmentations, more = self._slices(seg_folder, _SEGMENTATION)
            problems += more
        for row in sorted(set(segmentations) - set(images)):
            problems.append(Problem(f"segmentation without its image {row}.nii.png in {image_folder.name}",
                                    _case(row), segmentations[row]))
        rows = []
        for row, image in sorted(images.items()):
            if self.segmentations and row not in segmentations:
                problems.append(Problem(f"slice without its segmentation (expected {seg_folder.name}/"
                                        f"seg_{row.removeprefix('case_')}.nii.png)", _case(row), image))
            else:
                rows.append((row, FOLDER_SPLITS[word], image, segmentations.get(row)))
        return rows, problems

    @staticmethod
    def _split_conflicts(rows: list[tuple[str, str, Path, Path | None]]) -> list[Problem]:
        """A problem for every case whose slices lie in more than one split folder (the case is the subject)."""
        splits: dict[str, dict[str, Path]] = {}
        for row, split, image, _ in rows:
            splits.setdefault(_case(row), {}).setdefault(split, image.parent)
        return [Problem("case found in several official split folders (" + ", ".join(
                    folder.name for folder in found.values()) + "); a case may be in one split only", case)
                for case, found in sorted(splits.items()) if len(found) > 1]

    def _subjects(self, rows: list[tuple[str, str, Path, Path | None]], conflicts: set[str]) -> list[Subject]:
        """One healthy subject per slice; cases in two splits get no official split (they are reported and left
        out, so ``--skip-invalid`` can drop them without the engine's release-wide split conflict)."""
        subjects = []
        for row, split, image, segmentation in rows:
            if segmentation is not None and _empty(segmentation):
                self.empty_segmentations.append(row)
                continue
            files = {**self.image_columns({"t1": image}), **({"roi": segmentation} if segmentation else {})}
            subjects.append(Subject(id=row, group=HEALTHY, files=files, patient=_case(row),
                                    split=None if _case(row) in conflicts else split,
                                    roi_labels=TISSUE if segmentation else None))
        return subjects


def _case(row: str) -> str:
    """``case_001_slice_0`` -> ``case_001``."""
    return row.rsplit("_slice_", 1)[0]
