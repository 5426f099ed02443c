"""MSLUB (Lesjak et al. 2018, Neuroinformatics): 30 multiple-sclerosis patients of the University of Ljubljana,
3T T1w, contrast-enhanced T1w, T2w and FLAIR, with a multi-rater consensus lesion segmentation.

[UNVERIFIED] layout: the exact folder structure of the official archive (lit.fe.uni-lj.si) could not be checked.
The reading implemented here: one ``patientNN`` folder per patient holding files whose names contain a token
``T1W``, ``T1WKS``, ``T2W``, ``FLAIR``, ``consensus_gt`` (or ``consensus``) and optionally ``brainmask``
(``FLAIR.nii.gz``, ``patient01_T2W.nii.gz`` ...), either directly or in a ``raw`` / ``preprocessed`` /
``coregistered`` sub-folder, or with that variant folder above the patient folders
(``coregistered/patient01/FLAIR.nii.gz``, as in a public mirror). When several variants exist the co-registered one
is read (``preprocessed``, then ``coregistered``, then files directly in the patient folder, then ``raw``;
``--set variant=raw`` forces one); the others are ignored and counted in ``prepare.json`` (options).

The co-registered data is on the FLAIR grid, bias corrected, with a brain mask [UNVERIFIED: skull-stripped];
``brainmask`` becomes the roi. Raw images are in their acquisition spaces: prepare raw data with
``--modalities flair`` (the consensus mask is on the FLAIR grid [UNVERIFIED]); the other modalities are reported
as not on the mask's grid.

Every patient has MS lesions: one group, ``ms``. Default split: every patient in ``test_ms.csv`` (MSLUB as a test
set). Baur et al. partition the patients 5 VAL (labelled, for calibrating a threshold) / 25 TEST; our ``val``
split is healthy-slice validation, so that partition is not the default: ``--pathology-split val=0.17,test=0.83``
gives 5 / 25 patients whose val slices are then lesion-free ones. ``configs/datasets/mslub.yaml`` trains on the
lesion-free slices of half of the patients (``--pathology-split train=0.5,val=0.1,test=0.4``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from datamodules.releases.atlas import classify
from datamodules.releases.base import Problem, Release, ReleaseError, Subject, nifti_files

LAYOUT = """\
  ROOT/                                                         [UNVERIFIED] official folder structure; any of:
    patient01/{FLAIR,T1W,T1WKS,T2W,consensus_gt,brainmask}.nii.gz
    patient01/coregistered/FLAIR.nii.gz ...   patient01/raw/FLAIR.nii.gz ...   (also preprocessed/)
    coregistered/patient01/FLAIR.nii.gz ...   raw/patient01/FLAIR.nii.gz ...
  File names must contain one token: T1W, T1WKS, T2W, FLAIR, consensus_gt (or consensus), brainmask
  (e.g. patient01_FLAIR.nii.gz). brainmask is optional (the roi). With several variants the co-registered one is
  read (preprocessed > coregistered > patient folder > raw; --set variant=... picks one); the others are counted
  and ignored. Raw images are in their own spaces: prepare raw data with --modalities flair.
  Non-NIfTI files are ignored; every NIfTI file must lie in a patientNN folder."""

_PATIENT = re.compile(r"patient\d+", re.IGNORECASE)
_VARIANTS = ("preprocessed", "coregistered", "", "raw")  # preference order; "" = directly in the patient folder
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(T1WKS|T1W|T2W|FLAIR|consensus_gt|consensus|brainmask|brain_mask)"
                    r"(?![A-Za-z0-9])", re.IGNORECASE)
_KINDS = {"t1wks": "t1ks", "t1w": "t1", "t2w": "t2", "flair": "flair", "consensus_gt": "mask", "consensus": "mask",
          "brainmask": "roi", "brain_mask": "roi"}


def _kind_of(name: str) -> tuple[str, str] | None:
    """The kind named by the one token in a file name (None: no token, or tokens of two kinds)."""
    kinds = {_KINDS[token.lower()] for token in _TOKEN.findall(name)}
    return ("", kinds.pop()) if len(kinds) == 1 else None


def _place(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(patient, variant) of a file from its folder names below ROOT; None when it is not in one patient folder."""
    patients = [i for i, name in enumerate(parts) if _PATIENT.fullmatch(name)]
    if len(patients) != 1:
        return None
    i = patients[0]
    above = [name.lower() for name in parts[:i] if name.lower() in _VARIANTS]
    below = [name.lower() for name in parts[i + 1:]]
    if len(below) > 1 or (below and below[0] not in _VARIANTS) or len(above) + len(below) > 1:
        return None
    return parts[i], (above + below + [""])[0]


class MSLUBRelease(Release):
    """MSLUB: one row per patient (``patient01``), FLAIR grid as reference."""

    name = "mslub"
    title = "MSLUB (Ljubljana MS lesions, consensus masks) [UNVERIFIED layout]"
    layout = LAYOUT
    modalities = ("flair", "t1", "t1ks", "t2")  # flair first: the grid the consensus mask is compared with
    pathology_split: ClassVar[Mapping[str, float]] = {"test": 1.0}

    def __init__(self, root: str | Path, modalities=None, variant: str = "auto") -> None:
        super().__init__(root, modalities)
        choices = ("auto", "preprocessed", "coregistered", "patient", "raw")
        if variant not in choices:
            raise ReleaseError(f"MSLUB variant {variant!r}: choose one of {list(choices)} (patient: files directly "
                               "in the patientNN folders)")
        self.variant = variant
        self.read: str | None = None
        self.ignored: dict[str, int] = {}

    def options(self) -> dict[str, object]:
        return {**super().options(), "variant": self.variant, "read": self.read, "ignored_files": self.ignored}

    def scan(self) -> tuple[list[Subject], list[Problem]]:
        problems: list[Problem] = []
        groups: dict[tuple[str, str], list[Path]] = {}
        for path in nifti_files(self.root):
            place = _place(path.relative_to(self.root).parts[:-1])
            if place is None:
                subject = next((p for p in path.parts if _PATIENT.fullmatch(p)), None)
                problems.append(Problem("NIfTI file outside a patientNN folder (or its raw / preprocessed / "
                                        "coregistered sub-folder)", subject, path))
                continue
            groups.setdefault(place, []).append(path)
        found_variants = {variant for _, variant in groups}
        wanted = {"auto": None, "patient": ""}.get(self.variant, self.variant)
        read = wanted if wanted is not None else next((v for v in _VARIANTS if v in found_variants), "")
        self.read = read or "patient folder"
        counts: Counter[str] = Counter()
        for (_, variant), files in groups.items():
            if variant != read:
                counts[variant or "patient folder"] += len(files)
        self.ignored = dict(sorted(counts.items()))
        subjects = []
        for patient in sorted({p for p, _ in groups}):
            files = groups.get((patient, read))
            if not files:
                others = sorted(v or "patient folder" for p, v in groups if p == patient)
                problems.append(Problem(f"no {self.read} files (found: {', '.join(others)})", patient))
                continue
            subjects.append(self._subject(patient, files, problems))
        return subjects, problems

    def _subject(self, patient: str, files: list[Path], problems: list[Problem]) -> Subject:
        rows, found_problems = classify(patient, files, _kind_of, "one of the tokens T1W, T1WKS, T2W, FLAIR, "
                                                                  "consensus_gt, brainmask in the name")
        found = rows.get("", {})
        folder = files[0].parent
        problems += found_problems + self.require_modalities(patient, found, folder)
        if "mask" not in found:
            problems.append(Problem("missing consensus_gt (the consensus lesion mask)", patient, folder))
        columns = self.image_columns(found)
        columns.update({kind: found[kind] for kind in ("mask", "roi") if kind in found})
        return Subject(id=patient, group="ms", files=columns)
