"""Human Connectome Project, S1200 "Structural Preprocessed" package: healthy young adults, for training.

Every subject is healthy (group ``healthy``), split 0.8 / 0.1 / 0.1 into train / val / ``test_healthy``; HCP has
no lesion test set, so pair it with pathology releases. Zimmerer et al. trained on the HCP T2 images
(protocols.md section 8), which is why ``configs/datasets/hcp.yaml`` uses ``modality: t2``.

The package holds one folder per subject, named by the 6-digit subject id, with the bias-corrected, skull-stripped
T1w / T2w images and the FreeSurfer brain mask ``brainmask_fs`` in two spaces (``space`` option):

* ``acpc`` (default): native space, AC-PC aligned, 0.7 mm, ``T1w/`` folder;
* ``mni``: non-linearly registered to MNI152, ``MNINonLinear/`` folder.

``brainmask_fs`` becomes the roi; it is stored as floats 0.0 / 1.0, accepted as the binary values {0, 1}. T1w and
T2w of a subject are on one grid (checked). The package's other files (surfaces, FreeSurfer output, non-brain
images, release notes) are ignored.

[UNVERIFIED] Zimmerer et al. do not say which space they used; ``acpc`` keeps the native anatomy. The split is by
subject: HCP has many twins and siblings, and their family ids are restricted data, so family members may land in
different splits (acceptable for healthy training data, but not independent samples).
"""

from __future__ import annotations

import re
from pathlib import Path

from datamodules.releases.base import Problem, Release, ReleaseError, Subject, is_nifti

LAYOUT = """\
  ROOT/                                       (S1200 "Structural Preprocessed" package, unzipped)
    100307/                                   one folder per subject, named by its 6-digit id
      T1w/T1w_acpc_dc_restore_brain.nii.gz          space=acpc (default; 0.7 mm)
      T1w/T2w_acpc_dc_restore_brain.nii.gz
      T1w/brainmask_fs.nii.gz                       brain mask (roi), 0 / 1
      MNINonLinear/T1w_restore_brain.nii.gz         space=mni
      MNINonLinear/T2w_restore_brain.nii.gz
      MNINonLinear/brainmask_fs.nii.gz
  Other files of the package (surfaces, FreeSurfer, non-brain images, release notes) and non-NIfTI files in ROOT
  (zip files, behavioural CSVs) are ignored; every folder in ROOT must be a subject."""

_SPACES = {  # space -> (folder, {kind: file stem})
    "acpc": ("T1w", {"t1": "T1w_acpc_dc_restore_brain", "t2": "T2w_acpc_dc_restore_brain", "roi": "brainmask_fs"}),
    "mni": ("MNINonLinear", {"t1": "T1w_restore_brain", "t2": "T2w_restore_brain", "roi": "brainmask_fs"}),
}
_SUBJECT = re.compile(r"^\d{6}$")



class HCPRelease(Release):
    name = "hcp"
    title = "HCP S1200 Structural Preprocessed (healthy brain MRI: T1w, T2w)"
    layout = LAYOUT
    modalities = ("t1", "t2")

    def __init__(self, root: str | Path, modalities=None, space: str = "acpc") -> None:
        super().__init__(root, modalities)
        space = str(space).lower()
        if space not in _SPACES:
            raise ReleaseError(f"HCP space {space!r}: choose acpc (T1w/ folder) or mni (MNINonLinear/ folder)")
        self.space = space

    def options(self) -> dict[str, object]:
        return {**super().options(), "space": self.space}

    def _missing(self, subject: str, folder: Path, kind: str, stem: str) -> Problem:
        """The problem of one expected file that is not there, with a hint when the whole space folder is absent."""
        what = "brain mask (roi)" if kind == "roi" else f"{kind} image"
        message = f"missing {what}: {folder.name}/{stem}.nii.gz not found"
        if not folder.is_dir():
            other = next(s for s, (name, _) in _SPACES.items() if name != folder.name)
            if (folder.parent / _SPACES[other][0]).is_dir():
                message += f" (no {folder.name}/ folder, but {_SPACES[other][0]}/ is there: --set space={other})"
            else:
                message += f" (no {folder.name}/ folder: is this the Structural Preprocessed package?)"
        return Problem(message, subject, folder / f"{stem}.nii.gz")

    def _subject(self, folder: Path) -> tuple[Subject | None, list[Problem]]:
        subject = folder.name
        space_folder = folder / _SPACES[self.space][0]
        found: dict[str, Path] = {}
        problems = []
        for kind, stem in _SPACES[self.space][1].items():
            if kind != "roi" and kind not in self.selected:
                continue
            candidates = [p for p in (space_folder / f"{stem}.nii.gz", space_folder / f"{stem}.nii") if p.is_file()]
            if len(candidates) > 1:
                problems.append(Problem(f"two {stem} files (.nii.gz and .nii)", subject, candidates[1]))
            elif candidates:
                found[kind] = candidates[0]
            else:
                problems.append(self._missing(subject, space_folder, kind, stem))
        columns = self.image_columns(found)
        if not columns:
            return None, problems
        if "roi" in found:
            columns["roi"] = found["roi"]
        return Subject(id=subject, group="healthy", files=columns, extra={"space": self.space}), problems

    def scan(self) -> tuple[list[Subject], list[Problem]]:
        subjects, problems = [], []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and _SUBJECT.match(entry.name):
                subject, found = self._subject(entry)
                problems += found
                if subject is not None:
                    subjects.append(subject)
            elif entry.is_dir():  # named by itself, so that --skip-invalid can go on without it
                problems.append(Problem("folder is not an HCP subject (named by a 6-digit subject id)", entry.name,
                                        entry))
            elif is_nifti(entry):
                problems.append(Problem("NIfTI file directly in the release folder; images belong in "
                                        "<subject>/T1w/ or <subject>/MNINonLinear/", entry.name, entry))
        return subjects, problems
