"""IXI (brain-development.org): about 580 healthy adults scanned at three London sites, for training.

Every subject is healthy (group ``healthy``), split 0.8 / 0.1 / 0.1 into train / val / ``test_healthy``. IXI alone
has no lesion test set: pair it with pathology releases (the paper sweep composes ixi + brats + atlas + mslub +
fastmri, each prepared on its own).

Files: the official tarballs ``IXI-T1.tar``, ``IXI-T2.tar`` and ``IXI-PD.tar`` extract to flat files named
``IXI002-Guys-0828-T1.nii.gz``: the subject id ``IXI002-Guys-0828`` (IXI number, site Guys / HH / IOP, scan
number), then the modality. T1 is acquired separately from T2 / PD, on another voxel grid, so the modalities are not
checked against each other (``coregistered = False``); each is used on its own. The real release has a few
subjects without a T2 / PD image: prepare only the modalities you use (``--modalities t1``) or leave those subjects
out (``--skip-invalid``).

Raw IXI is neither skull-stripped nor registered. GenAI (Bercea et al.) trained on IXI T1 registered to MNI152 and
skull-stripped with Clinica. Processed exports go through the same layout: name each processed volume as the raw
file it comes from (``IXI002-Guys-0828-T1.nii.gz``) and point ``--root`` at their folder. Brain masks become the
roi with ``--set brain_masks=DIR`` (one ``<subject>.nii.gz`` per subject on the grid of the one selected modality);
a skull-stripped export without masks can use ``roi_from_foreground: true`` in the dataset config instead.

The split unit is the subject id; should one IXI number ever appear with two site / scan suffixes (not seen in
the release as documented [UNVERIFIED]), those rows share the IXI number as their split unit, so one person never
spans two splits. The MRA and DTI images of the release are recognised and not used.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from datamodules.releases.base import Problem, Release, ReleaseError, Subject, is_nifti

LAYOUT = """\
  ROOT/                                   (the official tarballs, each extracted into its own folder)
    IXI-T1/IXI002-Guys-0828-T1.nii.gz     IXI-T1.tar
    IXI-T2/IXI002-Guys-0828-T2.nii.gz     IXI-T2.tar
    IXI-PD/IXI002-Guys-0828-PD.nii.gz     IXI-PD.tar
  or every file flat in ROOT. Subject id = <IXI number>-<site: Guys, HH, IOP>-<scan number>.
  Skull-stripped / registered exports: the same file names, in the same layout.
  --set brain_masks=DIR (with one --modalities): DIR/IXI002-Guys-0828.nii.gz (or .nii), binary, on that modality's grid.
  MRA / DTI images (IXI002-Guys-0828-MRA.nii.gz, -DTI-00.nii.gz) and non-NIfTI files (IXI.xls) are ignored;
  every other NIfTI file must follow the naming."""

_SUBJECT = r"(?P<number>IXI\d+)-(?P<site>[A-Za-z]+)-(?P<scan>\d+)"
_FILE = re.compile(rf"^(?P<subject>{_SUBJECT})-(?P<kind>T1|T2|PD|MRA|DTI-\d+)\.nii(?:\.gz)?$", re.IGNORECASE)
_MASK = re.compile(rf"^(?P<subject>{_SUBJECT})\.nii(?:\.gz)?$", re.IGNORECASE)
_PREFIX = re.compile(rf"^{_SUBJECT}(?=[-_.])", re.IGNORECASE)
_TARBALL_FOLDERS = ("IXI-T1", "IXI-T2", "IXI-PD", "IXI-MRA", "IXI-DTI")
_UNUSED = ("mra", "dti")  # modalities of the release that NormBench does not use
_MISSING_HINT = ("; IXI has a few subjects without every modality: prepare only the modalities you use "
                 "(--modalities t1) or leave these subjects out (--skip-invalid)")



def _canonical(subject: str) -> str:
    """``ixi002-guys-0828`` -> ``IXI002-Guys-0828`` (the site as the release spells it)."""
    number, site, scan = subject.split("-")
    sites = {"guys": "Guys", "hh": "HH", "iop": "IOP"}
    return f"{number.upper()}-{sites.get(site.lower(), site)}-{scan}"


class IXIRelease(Release):
    name = "ixi"
    title = "IXI (healthy brain MRI: T1, T2, PD)"
    layout = LAYOUT
    modalities = ("t1", "t2", "pd")
    coregistered = False  # T1 is acquired on another grid than T2 / PD

    def __init__(self, root: str | Path, modalities=None, brain_masks: str | Path | None = None) -> None:
        super().__init__(root, modalities)
        self.brain_masks: Path | None = None
        if brain_masks:
            self.brain_masks = Path(brain_masks).expanduser().resolve()
            if not self.brain_masks.is_dir():
                raise ReleaseError(f"IXI brain_masks folder {self.brain_masks} does not exist or is not a folder")
            if self.brain_masks == self.root:
                raise ReleaseError("IXI brain_masks: keep the masks in their own folder, not in the release folder")
            if len(self.selected) != 1:
                raise ReleaseError(f"IXI brain_masks: masks lie on the grid of one modality (T1 and T2 / PD are "
                                   f"acquired separately); select exactly one with --modalities, e.g. --modalities "
                                   f"t1 (selected: {list(self.selected)})")

    def options(self) -> dict[str, object]:
        return {**super().options(), "brain_masks": str(self.brain_masks) if self.brain_masks else None}

    def _image_files(self) -> list[Path]:
        """NIfTI files below ROOT (the brain mask folder excluded when it lies inside)."""
        files = []
        for path in sorted(self.root.rglob("*")):
            if self.brain_masks is not None and path.is_relative_to(self.brain_masks):
                continue
            if path.is_file() and is_nifti(path):
                files.append(path)
        return files

    def _place(self, path: Path) -> tuple[str, str] | Problem:
        """(subject, modality) of one image file, or the problem with it."""
        match = _FILE.match(path.name)
        if match is None:
            prefix = _PREFIX.match(path.name)
            # a stray file without an IXI id is named by itself, so that --skip-invalid can still go on
            owner = _canonical(prefix.group(0)) if prefix else path.name
            return Problem("file name does not follow the IXI naming <IXI number>-<site>-<scan>-{T1,T2,PD}"
                           ".nii.gz", owner, path)
        kind = match["kind"].lower().split("-")[0]
        folder = path.parent.name.upper()
        if folder in _TARBALL_FOLDERS and folder != f"IXI-{kind.upper()}":
            return Problem(f"{kind} image inside the {path.parent.name} folder; each tarball's images belong in "
                           "their own folder", _canonical(match["subject"]), path)
        return _canonical(match["subject"]), kind

    def _masks(self) -> tuple[dict[str, Path], list[Problem]]:
        """Brain mask per subject id from the brain_masks folder."""
        if self.brain_masks is None:
            return {}, []
        masks: dict[str, Path] = {}
        problems = []
        for path in sorted(p for p in self.brain_masks.iterdir() if p.is_file() and is_nifti(p)):
            match = _MASK.match(path.name)
            if match is None:
                problems.append(Problem("brain mask name is not <subject>.nii.gz (e.g. IXI002-Guys-0828.nii.gz)",
                                        path.name, path))
                continue
            subject = _canonical(match["subject"])
            if subject in masks:
                problems.append(Problem(f"two brain masks: {masks[subject].name} and {path.name}", subject, path))
                continue
            masks[subject] = path
        return masks, problems

    def scan(self) -> tuple[list[Subject], list[Problem]]:
        found: dict[str, dict[str, Path]] = {}
        problems: list[Problem] = []
        for path in self._image_files():
            placed = self._place(path)
            if isinstance(placed, Problem):
                problems.append(placed)
                continue
            subject, kind = placed
            files = found.setdefault(subject, {})  # a subject with MRA / DTI only still misses its T1
            if kind in _UNUSED:
                continue
            if kind in files:
                problems.append(Problem(f"two {kind} images: {files[kind]} and {path}", subject, path))
                continue
            files[kind] = path
        masks, mask_problems = self._masks()
        problems += mask_problems
        numbers: dict[str, list[str]] = {}
        for subject in found:
            numbers.setdefault(subject.split("-")[0], []).append(subject)
        subjects = []
        for subject, files in sorted(found.items()):
            missing = [m for m in self.selected if m not in files]  # the order of require_modalities' problems
            problems += [replace(p, message=f"{p.message}: IXI-{m.upper()}/{subject}-{m.upper()}.nii.gz or the same "
                                            f"name flat in it{_MISSING_HINT}")
                         for p, m in zip(self.require_modalities(subject, files, self.root), missing, strict=True)]
            columns = self.image_columns(files)
            if not columns:
                continue  # none of the selected modalities: reported just above
            if self.brain_masks is not None:
                if subject in masks:
                    columns["roi"] = masks[subject]
                else:
                    problems.append(Problem(f"no brain mask {subject}.nii.gz in {self.brain_masks}", subject,
                                            self.brain_masks))
            number, site, _ = subject.split("-")
            subjects.append(Subject(id=subject, group="healthy", files=columns, extra={"site": site},
                                    patient=number if len(numbers[number]) > 1 else None))
        problems += [Problem("brain mask of a subject without images in the release", subject, path)
                     for subject, path in sorted(masks.items()) if subject not in found]
        return subjects, problems
