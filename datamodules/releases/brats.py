"""BraTS 2019 / 2020 / 2021 training data (and the 2023 glioma naming): one folder per subject.

Every subject is a glioma patient, so the release has one pathology group, ``tumor``, and no healthy subject.
Used two ways: as a test set of models trained elsewhere (IXI in the paper sweep: ``--pathology-split test=1``),
or on its own, training on the tumour-free slices of some subjects (``lesion_free_margin`` in the dataset config;
the ASC-Net reference set) and testing on the others. The default split does the latter.

Labels: 2019-2021 use 1 = necrotic / non-enhancing core, 2 = oedema, 4 = enhancing tumour; BraTS 2023 uses 3 for
enhancing tumour. ``labels`` picks the grouping that becomes the lesion mask: ``whole_tumor`` (every label, the
usual anomaly-detection target), ``tumor_core`` (1 + enhancing), ``enhancing``, or explicit values ``1,4``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from datamodules.releases.base import Problem, Release, ReleaseError, Subject, is_nifti

LAYOUT = """\
  ROOT/                                   any of:
    HGG/BraTS19_2013_2_1/BraTS19_2013_2_1_{t1,t1ce,t2,flair,seg}.nii.gz     (2019: HGG / LGG folders)
    BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz  (2020)
    BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz            (2021)
    BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz     (2023 glioma; mapped to t1,t1ce,t2,flair)
  Other files (CSV tables, READMEs) are ignored; every NIfTI file inside a subject folder must be recognised."""

_FILE = re.compile(r"^(?P<stem>.+?)[_-](?P<kind>t1ce|t1c|t1n|t1|t2w|t2f|t2|flair|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
_ALIASES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
_GROUPINGS = {  # (labels with enhancing = 4, labels with enhancing = 3)
    "whole_tumor": ((1, 2, 4), (1, 2, 3)),
    "tumor_core": ((1, 4), (1, 3)),
    "enhancing": ((4,), (3,)),
}
_TIMEPOINT = re.compile(r"-\d{3}$")
_BRATS20_SEG_ALIAS = re.compile(r"segm\.nii(?:\.gz)?$", re.IGNORECASE)  # BraTS20_Training_355's seg file name



class BraTSRelease(Release):
    name = "brats"
    title = "BraTS 2019/2020/2021 (2023 glioma naming accepted)"
    layout = LAYOUT
    modalities = ("t1", "t1ce", "t2", "flair")
    mask_values = frozenset({0, 1, 2, 4})
    pathology_split: ClassVar[Mapping[str, float]] = {"train": 0.5, "val": 0.1, "unlabelled": 0.1, "test": 0.3}

    def __init__(self, root: str | Path, modalities=None, labels: str = "whole_tumor") -> None:
        super().__init__(root, modalities)
        labels = str(labels)
        if labels not in _GROUPINGS:
            try:
                explicit = tuple(int(v) for v in labels.replace(",", " ").split())
            except ValueError:
                explicit = ()
            if not explicit:
                raise ReleaseError(f"BraTS labels {labels!r}: choose {sorted(_GROUPINGS)} or label values like 1,4")
        self.labels = labels

    def options(self) -> dict[str, object]:
        return {**super().options(), "labels": self.labels}

    def _mask_labels(self, modern: bool) -> tuple[int, ...]:
        if self.labels in _GROUPINGS:
            return _GROUPINGS[self.labels][modern]
        return tuple(int(v) for v in self.labels.replace(",", " ").split())

    def scan(self) -> tuple[list[Subject], list[Problem]]:
        folders: dict[Path, list[Path]] = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and is_nifti(path):
                folders.setdefault(path.parent, []).append(path)
        subjects, problems = [], []
        seen: dict[str, Path] = {}
        for folder, files in sorted(folders.items()):
            subject = folder.name
            if subject in seen:
                problems.append(Problem(f"subject folder name also used by {seen[subject]}", subject, folder))
                continue
            seen[subject] = folder
            found: dict[str, Path] = {}
            modern = subject.upper().startswith("BRATS-")
            for path in files:
                match = _FILE.match(path.name)
                if match is None and _BRATS20_SEG_ALIAS.search(path.name):
                    kind = "seg"
                elif match is None:
                    problems.append(Problem("unrecognised NIfTI file in a subject folder (expected "
                                            "<subject>_{t1,t1ce,t2,flair,seg}.nii.gz)", subject, path))
                    continue
                else:
                    kind = _ALIASES.get(match["kind"].lower(), match["kind"].lower())
                    modern = modern or match["kind"].lower() in _ALIASES
                if kind in found:
                    problems.append(Problem(f"two {kind} files: {found[kind].name} and {path.name}", subject, path))
                    continue
                found[kind] = path
            problems += self.require_modalities(subject, found, folder)
            if "seg" not in found:
                problems.append(Problem("missing seg (tumour labels); validation / test releases have none, "
                                        "prepare the training data", subject, folder))
                continue
            grade = folder.parent.name if folder.parent.name.upper() in ("HGG", "LGG") else ""
            subjects.append(Subject(
                id=subject, group="tumor", files={**self.image_columns(found), "mask": found["seg"]},
                mask_labels=self._mask_labels(modern),
                mask_values=frozenset({0, 1, 2, 3}) if modern else None,
                extra={"grade": grade} if grade else {},
                patient=_TIMEPOINT.sub("", subject) if modern else None,  # BraTS-GLI-00000-001: time point 1
            ))
        return subjects, problems
