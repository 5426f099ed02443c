"""ATLAS v2.0 (Anatomical Tracings of Lesions After Stroke, Liew et al. 2022): T1w volumes with stroke lesion masks.

The public R2.0 release is BIDS-like: ``Training/`` holds 655 subjects in 33 cohort folders (``R001`` .. ``R052``),
each with a T1w volume and a manual lesion mask, both on the MNI152NLin2009aSym grid (197 x 233 x 189, 1 mm).
``Testing/`` holds T1w volumes whose masks were withheld: it is ignored, and ``prepare.json`` (options,
``testing_subjects_ignored``) says how many subjects that leaves out.

Every subject has a stroke, so the release has one pathology group, ``stroke``, and no healthy subject. The default
split sends every subject to ``test_stroke.csv`` (ATLAS as the test set of a model trained on healthy T1w data: the
GenAI / autoDDPM protocol, axial slice 95 at 128 px). ``configs/datasets/atlas.yaml`` instead uses ATLAS on its own
(``--pathology-split train=0.5,val=0.1,test=0.4``: training on the lesion-free slices of half of the patients).

The volumes are defaced but not skull-stripped. ``--set brain_mask=PATH`` gives one brain mask on the same MNI grid
(e.g. TemplateFlow's ``tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz``; that it matches the ATLAS grid is
[UNVERIFIED], prepare checks shape and affine against every subject) that becomes every subject's roi. Without it
the rows have no roi and the dataset config's ``roi_from_foreground`` makes the roi the filled non-background region:
the head (plus any background noise inside the field of view), not the brain.

This module also holds the small file-finding helpers that the MSLUB and MS-SEG adapters share.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import ClassVar

from datamodules.releases.base import Problem, Release, ReleaseError, Subject, nifti_files

# --------------------------------------------------------------------------------------------- shared helpers
KindOf = Callable[[str], "tuple[str, str] | None"]  # file name -> (row, kind), or None when not recognised


def child_folder(folder: Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` called ``name`` (case-insensitive), or None."""
    if not folder.is_dir():
        return None
    matches = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.lower() == name.lower())
    return matches[0] if matches else None


def regex_kinds(patterns: Mapping[str, str]) -> KindOf:
    """A :data:`KindOf` from ``kind -> regex`` (full match of the file name, case-insensitive); the named group
    ``row`` (when present) says which row of the folder the file belongs to (a time point), else ``""``."""
    compiled = {kind: re.compile(pattern, re.IGNORECASE) for kind, pattern in patterns.items()}

    def kind_of(name: str) -> tuple[str, str] | None:
        for kind, regex in compiled.items():
            match = regex.fullmatch(name)
            if match:
                return match.groupdict().get("row") or "", kind
        return None

    return kind_of


def classify(subject: str, files: Iterable[Path], kind_of: KindOf,
             expected: str) -> tuple[dict[str, dict[str, Path]], list[Problem]]:
    """Sort a subject folder's files into ``row -> kind -> path``; every file that no kind matches, and a second
    file of one kind, is a problem (``expected`` names the files that belong there)."""
    rows: dict[str, dict[str, Path]] = {}
    problems: list[Problem] = []
    for path in sorted(files):
        key = kind_of(path.name)
        if key is None:
            problems.append(Problem(f"unrecognised NIfTI file (expected {expected})", subject, path))
            continue
        row, kind = key
        found = rows.setdefault(row, {})
        if kind in found:
            problems.append(Problem(f"two {kind} files: {found[kind].name} and {path.name}", subject, path))
            continue
        found[kind] = path
    return rows, problems


def merge_rows(*tables: Mapping[str, Mapping[str, Path]]) -> dict[str, dict[str, Path]]:
    """Union of several ``row -> kind -> path`` tables (from different sub-folders of one subject)."""
    merged: dict[str, dict[str, Path]] = {}
    for table in tables:
        for row, found in table.items():
            merged.setdefault(row, {}).update(found)
    return merged


# ------------------------------------------------------------------------------------------------------ ATLAS
LAYOUT = """\
  ROOT/                                                      (the extracted ATLAS_2 folder)
    Training/R001/sub-r001s001/ses-1/anat/
      sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
      sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
    Training/R002 ... R052/sub-*/ses-*/anat/...              (cohort folders)
    Testing/...                                              ignored: no lesion masks (counted in prepare.json)
  Only Training/ is read. JSON sidecars, CSV tables and READMEs are ignored; every NIfTI file under ROOT must be
  one of the two files above in a sub-*/ses-*/anat/ folder of Training/, or lie under Testing/.
  Option --set brain_mask=PATH: one brain mask on the MNI grid, the roi of every subject (else the dataset
  config's roi_from_foreground: the head, the volumes are not skull-stripped)."""

_COHORT = re.compile(r"R\d+", re.IGNORECASE)
_SPACE = r"_space-[A-Za-z0-9]+_"


class ATLASRelease(Release):
    """ATLAS R2.0 training data: one row per subject (``sub-r001s001``; ``sub-..._ses-N`` with several sessions)."""

    name = "atlas"
    title = "ATLAS v2.0 (stroke lesions, T1w, MNI152NLin2009aSym)"
    layout = LAYOUT
    modalities = ("t1",)
    pathology_split: ClassVar[Mapping[str, float]] = {"test": 1.0}

    def __init__(self, root: str | Path, modalities=None, brain_mask: str | None = None) -> None:
        super().__init__(root, modalities)
        self.brain_mask: Path | None = None
        if brain_mask:
            path = Path(brain_mask).expanduser().resolve()
            if not path.is_file():
                raise ReleaseError(f"ATLAS brain_mask {brain_mask!r}: no such file (give one brain mask NIfTI on the "
                                   "MNI152NLin2009aSym grid of the ATLAS volumes)")
            self.brain_mask = path

    def _part(self, name: str) -> Path | None:
        return child_folder(self.root, name)

    def testing_subjects(self) -> int:
        """Subjects in the ignored ``Testing/`` folder (no masks)."""
        testing = self._part("Testing")
        return 0 if testing is None else len({p.name for p in testing.rglob("sub-*") if p.is_dir()})

    def options(self) -> dict[str, object]:
        return {**super().options(), "read": "Training",
                "brain_mask": str(self.brain_mask) if self.brain_mask else None,
                "roi": "brain_mask" if self.brain_mask else "none (dataset config: roi_from_foreground = head)",
                "testing_subjects_ignored": self.testing_subjects()}

    def scan(self) -> tuple[list[Subject], list[Problem]]:
        training = self._part("Training")
        if training is None:
            return [], [Problem(f"no Training/ folder in {self.root} (ATLAS R2.0 keeps the labelled data there)")]
        testing = self._part("Testing")
        sessions: dict[tuple[str, str], list[Path]] = {}
        cohorts: dict[str, Path] = {}
        problems: list[Problem] = []
        for path in nifti_files(self.root):
            if testing is not None and path.is_relative_to(testing):
                continue  # no masks: ignored, counted in options()
            parts = path.relative_to(training).parts if path.is_relative_to(training) else ()
            if not (len(parts) == 5 and _COHORT.fullmatch(parts[0]) and parts[1].startswith("sub-")
                    and parts[2].startswith("ses-") and parts[3] == "anat"):
                subject = next((p for p in path.parts if p.startswith("sub-")), None)
                problems.append(Problem("NIfTI file outside the Training/R###/sub-*/ses-*/anat/ layout", subject, path))
                continue
            cohort = path.parents[3]
            if cohorts.setdefault(parts[1], cohort) != cohort:
                problems.append(Problem(f"subject folder also in cohort {cohorts[parts[1]].name}", parts[1], path))
                continue
            sessions.setdefault((parts[1], parts[2]), []).append(path)
        per_subject = Counter(sub for sub, _ in sessions)
        subjects = []
        for (sub, ses), files in sorted(sessions.items()):
            row_id = sub if per_subject[sub] == 1 else f"{sub}_{ses}"
            subjects.append(self._session(row_id, sub, ses, files, problems))
        return subjects, problems

    def _session(self, row_id: str, sub: str, ses: str, files: list[Path],
                 problems: list[Problem]) -> Subject:
        """The row of one session folder; its problems are appended to ``problems``."""
        stem = re.escape(f"{sub}_{ses}") + _SPACE
        kind_of = regex_kinds({"t1": stem + r"T1w\.nii(?:\.gz)?",
                               "mask": stem + r"label-L_desc-T1lesion_mask\.nii(?:\.gz)?"})
        expected = f"{sub}_{ses}_space-MNI152NLin2009aSym_{{T1w,label-L_desc-T1lesion_mask}}.nii.gz"
        rows, found_problems = classify(row_id, files, kind_of, expected)
        found = rows.get("", {})
        folder = files[0].parent
        problems += found_problems + self.require_modalities(row_id, found, folder)
        if "mask" not in found:
            problems.append(Problem("missing lesion mask (*_label-L_desc-T1lesion_mask.nii.gz)", row_id, folder))
        columns = {**self.image_columns(found), **({"mask": found["mask"]} if "mask" in found else {})}
        if self.brain_mask is not None:
            columns["roi"] = self.brain_mask
        return Subject(id=row_id, group="stroke", files=columns, extra={"cohort": files[0].parents[3].name},
                       patient=sub if row_id != sub else None)
