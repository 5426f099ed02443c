"""MS lesion challenge releases: MS-SEG 2015 (ISBI 2015 longitudinal challenge) and MS-SEG 2016 (MICCAI 2016).

Both keep patient folders inside part folders (``training/`` ...), with one sub-folder of co-registered,
skull-stripped images and one of masks; raw data sub-folders are ignored (counted in ``prepare.json``). Every
patient has MS lesions: one group, ``ms``; the default split sends every row to ``test_ms.csv``.

* **MS-SEG 2015** (ISBI 2015, Carass et al. 2017): rows are time points (``training01_01``), the split unit is the
  patient (``training01``: its time points stay in one split). Images ``preprocessed/*_{flair,mprage,pd,t2}_pp.nii``
  (mprage -> ``t1``); masks of two raters, no consensus: ``--set rater=1`` (default), ``2``, ``union`` or
  ``intersection``. Union / intersection masks are derived files, written below the prepare output folder
  (``derived_masks/``) while scanning (so also when prepare then stops on another subject's problem), only when
  their content changes, after checking both raters' masks (binary, same grid).
  The challenge's test data (``testdata_website/`` or any top-level ``test*`` folder) has no public masks: ignored,
  counted. No brain mask ships with it: the dataset config uses ``roi_from_foreground``. ASC-Net used "MS-SEG 2015"
  slices at 160 x 160.
* **MS-SEG 2016** (MICCAI 2016, Commowick et al. 2018): rows are patients (``Center_01_Patient_01``). Images
  ``Preprocessed_Data/{FLAIR,T1,T2,DP,GADO}_preprocessed.nii.gz``; mask ``Masks/Consensus.nii.gz``; roi
  ``Masks/Brain_Mask.nii.gz`` (optional: without it the config's ``roi_from_foreground``); the seven raters'
  ``ManualSegmentation_N`` are recognised and not used. ``Testing/`` (the unblinded release has Consensus masks) is
  read too and kept as the official test split (``--set parts=training`` leaves it out, e.g. the blinded test
  data); its ids start with ``Testing_`` because the numbering of its patient folders may repeat the training
  ones [UNVERIFIED].
"""

from __future__ import annotations

import gzip
import re
import zlib
from abc import abstractmethod
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np

from datamodules.releases.atlas import KindOf, classify, merge_rows, regex_kinds
from datamodules.releases.base import Problem, Release, ReleaseError, Subject, nifti_files, write_if_changed

_UNREADABLE = (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError, zlib.error)
_NII = r"\.nii(?:\.gz)?"


class _MSSEGRelease(Release):
    """Patient folders ``ROOT/<part>/<level 1>/.../<sub-folder>/<file>``; subclasses name the levels, the files
    of each sub-folder and how a patient's files become rows."""

    pathology_split: ClassVar[Mapping[str, float]] = {"test": 1.0}
    levels: ClassVar[tuple[re.Pattern, ...]]  # folder name patterns of a patient below its part folder
    ignored_subfolders: ClassVar[tuple[str, ...]] = ()  # lower-case sub-folders of a patient that are not read

    def __init__(self, root: str | Path, modalities=None) -> None:
        super().__init__(root, modalities)
        self.ignored: dict[str, int] = {}

    def options(self) -> dict[str, object]:
        return {**super().options(), "parts": sorted(self.read_parts()), "ignored": self.ignored}

    # subclass interface -----------------------------------------------------------------------------------------
    @abstractmethod
    def read_parts(self) -> dict[str, str | None]:
        """Lower-case part folders that are read -> their official split (None: split by fractions)."""

    @abstractmethod
    def is_ignored_part(self, name: str) -> bool:
        """Top-level folders (lower case, not read) whose data is counted and ignored: no masks, or left out."""

    @abstractmethod
    def subject_id(self, part: str, names: tuple[str, ...]) -> str:
        """The row id (patient id) of a patient folder."""

    @abstractmethod
    def kinds(self, names: tuple[str, ...]) -> dict[str, tuple[KindOf, str]]:
        """Lower-case sub-folder -> (its file kinds, the expected names for error messages)."""

    @abstractmethod
    def subjects(self, pid: str, names: tuple[str, ...], rows: dict[str, dict[str, Path]], split: str | None,
                 folder: Path, problems: list[Problem]) -> list[Subject]:
        """The rows of one patient; their problems are appended to ``problems``."""

    # scanning ------------------------------------------------------------------------------------------------
    def scan(self) -> tuple[list[Subject], list[Problem]]:
        problems: list[Problem] = []
        patients: dict[tuple[str, tuple[str, ...]], dict[str, list[Path]]] = {}
        ignored: Counter[str] = Counter()
        ignored_patients: dict[str, set[tuple[str, ...]]] = {}
        read, depth = self.read_parts(), len(self.levels)
        for path in nifti_files(self.root):
            rel = path.relative_to(self.root).parts
            part = rel[0].lower() if len(rel) > 1 else ""
            if part not in read and self.is_ignored_part(part):
                ignored_patients.setdefault(f"{rel[0]} patients", set()).add(rel[1:depth + 1])
                continue
            names = rel[1:depth + 1]
            if part not in read or len(rel) < depth + 2 or not all(
                    level.fullmatch(name) for level, name in zip(self.levels, names, strict=True)):
                problems.append(Problem("NIfTI file outside the patient folders of the layout", None, path))
                continue
            if len(rel) > depth + 2 and rel[depth + 1].lower() in self.ignored_subfolders:
                ignored[f"{rel[depth + 1]} files"] += 1
                continue
            if len(rel) != depth + 3:
                problems.append(Problem(f"NIfTI file not directly in a sub-folder of the patient folder (expected "
                                        f"{sorted(self.kinds(names))})", self.subject_id(part, names), path))
                continue
            patients.setdefault((rel[0], names), {}).setdefault(rel[depth + 1], []).append(path)
        ignored.update({key: len(found) for key, found in ignored_patients.items()})
        self.ignored = dict(sorted(ignored.items()))
        subjects: list[Subject] = []
        for (part, names), subfolders in sorted(patients.items()):
            pid = self.subject_id(part.lower(), names)
            folder = self.root.joinpath(part, *names)
            rows = self._classify(pid, names, subfolders, problems)
            subjects += self.subjects(pid, names, rows, read[part.lower()], folder, problems)
        return subjects, problems

    def _classify(self, pid: str, names: tuple[str, ...], subfolders: dict[str, list[Path]],
                  problems: list[Problem]) -> dict[str, dict[str, Path]]:
        tables = self.kinds(names)
        found = []
        for subfolder, files in sorted(subfolders.items()):
            if subfolder.lower() not in tables:
                known = sorted(tables) + [f"{s} (ignored)" for s in self.ignored_subfolders]
                problems += [Problem(f"NIfTI file in an unknown sub-folder {subfolder!r} (expected {known})", pid, p)
                             for p in files]
                continue
            kind_of, expected = tables[subfolder.lower()]
            rows, found_problems = classify(pid, files, kind_of, expected)
            problems += found_problems
            found.append(rows)
        return merge_rows(*found)


# ------------------------------------------------------------------------------------------------- MS-SEG 2016
LAYOUT_2016 = """\
  ROOT/
    Training/Center_01/Patient_01/
      Preprocessed_Data/{FLAIR,T1,T2,DP,GADO}_preprocessed.nii.gz
      Masks/Consensus.nii.gz  Masks/Brain_Mask.nii.gz (optional roi)  Masks/ManualSegmentation_{1..7}.nii.gz (unused)
      Raw_Data/...                                            ignored (counted in prepare.json)
    Training/Center_07/..., Center_08/...
    Testing/Center_01/Patient_01/...                          same structure (unblinded release: with Consensus);
                                                              official test split; --set parts=training drops it
  Subject ids: Center_01_Patient_01 (Training), Testing_Center_01_Patient_01 (Testing). Non-NIfTI files are
  ignored; every NIfTI file must be one of the files above."""

_PARTS_2016 = {"training": None, "testing": "test"}
_MODALITY_2016 = {"flair": "FLAIR", "t1": "T1", "t2": "T2", "dp": "DP", "gado": "GADO"}


class MSSEG2016Release(_MSSEGRelease):
    name = "msseg2016"
    title = "MS-SEG 2016 (MICCAI 2016 MS lesion segmentation challenge)"
    layout = LAYOUT_2016
    modalities = ("flair", "t1", "t2", "dp", "gado")
    levels = (re.compile(r"Center_\d+", re.IGNORECASE), re.compile(r"Patient_\d+", re.IGNORECASE))
    ignored_subfolders = ("raw_data",)

    def __init__(self, root: str | Path, modalities=None, parts: str = "training,testing") -> None:
        super().__init__(root, modalities)
        chosen = {p.strip().lower() for p in str(parts).split(",") if p.strip()}
        if not chosen or chosen - set(_PARTS_2016):
            raise ReleaseError(f"MS-SEG 2016 parts {parts!r}: choose training, testing or training,testing")
        self.parts = chosen

    def read_parts(self) -> dict[str, str | None]:
        return {p: split for p, split in _PARTS_2016.items() if p in self.parts}

    def is_ignored_part(self, name: str) -> bool:
        return name in _PARTS_2016  # a part left out by --set parts

    def subject_id(self, part: str, names: tuple[str, ...]) -> str:
        return ("Testing_" if part == "testing" else "") + "_".join(names)

    def kinds(self, names: tuple[str, ...]) -> dict[str, tuple[KindOf, str]]:
        images = {m: rf"{token}_preprocessed{_NII}" for m, token in _MODALITY_2016.items()}
        masks = {"mask": rf"Consensus{_NII}", "roi": rf"Brain_Mask{_NII}",
                 **{f"rater{i}": rf"ManualSegmentation_{i}{_NII}" for i in range(1, 8)}}
        return {"preprocessed_data": (regex_kinds(images), "{FLAIR,T1,T2,DP,GADO}_preprocessed.nii.gz"),
                "masks": (regex_kinds(masks), "Consensus, Brain_Mask or ManualSegmentation_1..7 .nii.gz")}

    def subjects(self, pid: str, names: tuple[str, ...], rows: dict[str, dict[str, Path]], split: str | None,
                 folder: Path, problems: list[Problem]) -> list[Subject]:
        found = rows.get("", {})
        problems += self.require_modalities(pid, found, folder / "Preprocessed_Data")
        if "mask" not in found:
            problems.append(Problem("missing Masks/Consensus.nii.gz (the consensus lesion mask; the blinded test "
                                    "data has none: --set parts=training)", pid, folder))
        columns = self.image_columns(found)
        columns.update({kind: found[kind] for kind in ("mask", "roi") if kind in found})
        return [Subject(id=pid, group="ms", files=columns, split=split, extra={"center": names[0]})]


# ------------------------------------------------------------------------------------------------- MS-SEG 2015
LAYOUT_2015 = """\
  ROOT/
    training/training01/
      preprocessed/training01_01_{flair,mprage,pd,t2}_pp.nii        (one set per time point _01, _02, ...)
      masks/training01_01_mask1.nii  masks/training01_01_mask2.nii  (raters 1 and 2; --set rater=1|2|union|...)
      orig/...                                                      ignored (counted in prepare.json)
    training/training02/ ... training05/
    testdata_website/test01/...                                     ignored: no public masks (counted)
  Rows are time points (training01_01); a patient's time points stay in one split. .nii or .nii.gz;
  non-NIfTI files are ignored; every NIfTI file must be one of the files above."""

_MODALITY_2015 = {"flair": "flair", "t1": "mprage", "pd": "pd", "t2": "t2"}
_RATERS = ("1", "2", "union", "intersection")


class MSSEG2015Release(_MSSEGRelease):
    name = "msseg2015"
    title = "MS-SEG 2015 (ISBI 2015 longitudinal MS lesion segmentation challenge)"
    layout = LAYOUT_2015
    modalities = ("flair", "t1", "pd", "t2")
    levels = (re.compile(r"training\d+", re.IGNORECASE),)
    ignored_subfolders = ("orig",)

    def __init__(self, root: str | Path, modalities=None, rater: str = "1") -> None:
        super().__init__(root, modalities)
        if str(rater) not in _RATERS:
            raise ReleaseError(f"MS-SEG 2015 rater {rater!r}: choose one of {list(_RATERS)}")
        self.rater = str(rater)

    def options(self) -> dict[str, object]:
        derived = str(self._derived_folder()) if self.rater in ("union", "intersection") and self.out else None
        return {**super().options(), "rater": self.rater, "derived_masks": derived}

    def read_parts(self) -> dict[str, str | None]:
        return {"training": None}

    def is_ignored_part(self, name: str) -> bool:
        return name.startswith("test")

    def subject_id(self, part: str, names: tuple[str, ...]) -> str:
        return names[0]

    def kinds(self, names: tuple[str, ...]) -> dict[str, tuple[KindOf, str]]:
        point = rf"(?P<row>{re.escape(names[0])}_\d+)"
        images = {m: rf"{point}_{token}_pp{_NII}" for m, token in _MODALITY_2015.items()}
        masks = {f"mask{r}": rf"{point}_mask{r}{_NII}" for r in ("1", "2")}
        return {"preprocessed": (regex_kinds(images), f"{names[0]}_NN_{{flair,mprage,pd,t2}}_pp.nii"),
                "masks": (regex_kinds(masks), f"{names[0]}_NN_mask{{1,2}}.nii")}

    def subjects(self, pid: str, names: tuple[str, ...], rows: dict[str, dict[str, Path]], split: str | None,
                 folder: Path, problems: list[Problem]) -> list[Subject]:
        subjects = []
        for point, found in sorted(rows.items()):
            problems += self.require_modalities(point, found, folder / "preprocessed")
            columns = self.image_columns(found)
            mask = self._mask(point, found, folder / "masks", problems)
            if mask is not None:
                columns["mask"] = mask
            subjects.append(Subject(id=point, group="ms", files=columns, split=split, patient=pid))
        return subjects  # every time point, complete or not: a problem in one leaves its whole patient out

    # rater masks ------------------------------------------------------------------------------------------------
    def _mask(self, point: str, found: dict[str, Path], folder: Path, problems: list[Problem]) -> Path | None:
        needed = ["mask1", "mask2"] if self.rater in ("union", "intersection") else [f"mask{self.rater}"]
        missing = [kind for kind in needed if kind not in found]
        if missing:
            problems += [Problem(f"missing {point}_{kind}.nii (rater {kind[-1]} lesion mask; rater={self.rater})",
                                 point, folder) for kind in missing]
            return None
        if len(needed) == 1:
            return found[needed[0]]
        return self._combine(point, found["mask1"], found["mask2"], problems)

    def _derived_folder(self) -> Path:
        if self.out is None:
            raise ReleaseError(f"MS-SEG 2015 rater={self.rater} derives masks below the prepare output folder; "
                               "run it through prepare (run_benchmark.py prepare msseg2015 ... --out PATH)")
        return Path(self.out).expanduser().resolve() / "derived_masks"

    def _combine(self, point: str, first: Path, second: Path, problems: list[Problem]) -> Path | None:
        """The union / intersection of both raters' masks, written only when its content changes."""
        volumes = []
        for path in (first, second):
            try:
                image = nib.load(str(path))
                data = np.asanyarray(image.dataobj)
            except _UNREADABLE as error:
                problems.append(Problem(f"unreadable mask file ({type(error).__name__}: {error})", point, path))
                return None
            unexpected = sorted({float(v) for v in np.unique(data)[:50]} - {0.0, 1.0})
            if unexpected:
                problems.append(Problem(f"mask has unexpected label value(s) {unexpected[:8]}; rater masks are "
                                        "binary (0, 1)", point, path))
                return None
            volumes.append((data, image.affine))
        (a, affine), (b, other) = volumes
        if a.shape != b.shape or not np.allclose(affine, other, atol=1e-3):
            problems.append(Problem(f"the raters' masks are on different grids ({first.name} {a.shape}, "
                                    f"{second.name} {b.shape})", point, second))
            return None
        combined = np.logical_or(a > 0, b > 0) if self.rater == "union" else np.logical_and(a > 0, b > 0)
        target = self._derived_folder() / f"{point}_mask_{self.rater}.nii.gz"
        write_if_changed(target, gzip.compress(nib.Nifti1Image(combined.astype(np.uint8), affine).to_bytes(),
                                                      mtime=0))
        return target
