"""LiTS, the Liver Tumor Segmentation Challenge (Bilic et al.): 131 training CT volumes with liver / tumour labels.

Every training volume has a segmentation: 0 background, 1 liver, 2 tumour. The evaluation region (roi) is the
liver with its tumours (labels 1 and 2), the lesion mask is the tumour (label 2); both columns point at the same
segmentation file and select their labels through ``roi_labels`` / ``mask_labels``. Volumes whose segmentation
has no tumour voxel form the ``healthy`` group (a liver without tumour), the others the ``tumor`` group, so
``scan()`` reads every segmentation once.

Default splits: healthy livers train 0.8 / val 0.1 / test 0.1; tumour patients train 0.5 / val 0.1 / test 0.4,
where training and validation use only their tumour-free slices (``lesion_free_margin`` in the dataset config,
the ASC-Net / BMAD style of training on healthy slices of patients). The challenge's test volumes
(``test-volume-N.nii``) have no public segmentation: they are ignored and counted in the manifest's options.

CT intensities are Hounsfield units; the dataset config windows them (``intensity_window``), and the pipeline
reorients every volume to RAS, so the varying orientations of LiTS headers do not matter.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np

from datamodules.releases.base import HEALTHY, Problem, Release, Subject, is_nifti

LAYOUT = """\
  ROOT/                                       (searched recursively)
    Training Batch 1/volume-0.nii ... volume-27.nii, segmentation-0.nii ... segmentation-27.nii
    Training Batch 2/volume-28.nii ... volume-130.nii, segmentation-28.nii ... segmentation-130.nii
  .nii.gz is accepted too. Challenge test volumes (test-volume-N.nii, no public segmentation) are ignored and
  counted in prepare.json; files that are not NIfTI are ignored; any other NIfTI file is reported."""

_FILE = re.compile(r"^(?P<kind>volume|segmentation)-(?P<number>\d+)\.nii(?:\.gz)?$", re.IGNORECASE)
_TEST_FILE = re.compile(r"^test-volume-\d+\.nii(?:\.gz)?$", re.IGNORECASE)
LIVER, TUMOUR = 1, 2



def _has_tumour(path: Path) -> bool:
    """Whether a segmentation holds the tumour label (reads the whole file; raises when unreadable)."""
    data = np.asanyarray(nib.load(str(path)).dataobj)
    return bool((data == TUMOUR).any())


class LiTSRelease(Release):
    name = "lits"
    title = "LiTS (Liver Tumor Segmentation Challenge) training CT"
    layout = LAYOUT
    modalities = ("ct",)
    mask_values = frozenset({0, LIVER, TUMOUR})
    roi_values = frozenset({0, LIVER, TUMOUR})
    pathology_split: ClassVar[Mapping[str, float]] = {"train": 0.5, "val": 0.1, "test": 0.4}

    @cached_property
    def _files(self) -> dict[str, list[Path]]:
        """NIfTI files under the root by role: ``volume`` / ``segmentation``, ``test`` (test-volume-N), ``other``."""
        files: dict[str, list[Path]] = {"volume": [], "segmentation": [], "test": [], "other": []}
        for path in sorted(self.root.rglob("*")):
            if not (path.is_file() and is_nifti(path)):
                continue
            match = _FILE.match(path.name)
            if match is not None:
                files[match["kind"].lower()].append(path)
            else:
                files["test" if _TEST_FILE.match(path.name) else "other"].append(path)
        return files

    def options(self) -> dict[str, object]:
        return {**super().options(), "test_volumes_ignored": len(self._files["test"])}

    def _by_number(self, kind: str) -> tuple[dict[int, Path], list[Problem]]:
        """Volume number -> file of one kind, with a problem for each number found twice."""
        found: dict[int, Path] = {}
        problems = []
        for path in self._files[kind]:
            number = int(_FILE.match(path.name)["number"])
            if number in found:
                problems.append(Problem(f"two {kind} files for volume {number}: {found[number]} and {path}",
                                        f"lits-{number}", path))
            else:
                found[number] = path
        return found, problems

    def scan(self) -> tuple[list[Subject], list[Problem]]:
        volumes, problems = self._by_number("volume")
        segmentations, more = self._by_number("segmentation")
        problems += more
        problems += [Problem("unrecognised NIfTI file (expected volume-N.nii / segmentation-N.nii)", None, path)
                     for path in self._files["other"]]
        paired = []
        for number in sorted(set(volumes) | set(segmentations)):
            subject = f"lits-{number}"
            found = {"ct": volumes[number]} if number in volumes else {}
            if number not in segmentations:
                problems.append(Problem(f"volume-{number} has no segmentation-{number}.nii(.gz); every training "
                                        "volume needs its liver / tumour labels", subject, volumes[number]))
                continue
            missing = self.require_modalities(subject, found, segmentations[number].parent)
            if missing:
                problems += missing
                continue
            paired.append((subject, found, segmentations[number]))
        with ThreadPoolExecutor(max_workers=4) as pool:
            groups = list(pool.map(lambda item: self._group(item[0], item[2]), paired))
        subjects = []
        for (subject, found, segmentation), group in zip(paired, groups, strict=True):
            if isinstance(group, Problem):
                problems.append(group)
                continue
            subjects.append(Subject(id=subject, group=group,
                                    files={**self.image_columns(found), "mask": segmentation, "roi": segmentation},
                                    mask_labels=(TUMOUR,), roi_labels=(LIVER, TUMOUR)))
        return subjects, problems

    @staticmethod
    def _group(subject: str, segmentation: Path) -> str | Problem:
        """``tumor`` or ``healthy`` from the segmentation, or the problem that prevents reading it."""
        try:
            return "tumor" if _has_tumour(segmentation) else HEALTHY
        except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError, zlib.error) as error:
            return Problem(f"unreadable segmentation ({type(error).__name__}: {error}); whether the volume has a "
                           "tumour cannot be decided", subject, segmentation)
