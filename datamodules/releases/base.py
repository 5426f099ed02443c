"""Preparing a public dataset release: scan, validate, split by subject, write split CSVs.

A :class:`Release` knows one official on-disk layout. ``scan()`` lists its subjects (:class:`Subject`: an id, a
group, the files per CSV column) and every problem it meets on the way (:class:`Problem`: a missing modality, a
file that matches no pattern, a subject in two official splits). :func:`prepare` then reads every file
(:func:`check_subject`: readable, finite, same grid as the image, mask values the release allows), splits the
subjects with a fixed seed and writes the split CSVs of :mod:`datamodules.nifti` plus ``prepare.json`` (what was
written and why) and ``prepare_report.txt``.

Rules:

* Nothing is skipped silently. With problems and without ``skip_invalid`` nothing but the report is written and
  :class:`ReleaseError` lists every problem; with ``skip_invalid`` the subjects with problems are left out and
  named in the report and the manifest. Problems of the release as a whole (no subject found) always stop.
* Splits are by subject: a subject is in exactly one of train / val / unlabelled / test; it may be in several
  test sets (one image with two pathologies). Official splits of a release are kept.
* Deterministic and idempotent: subjects are sorted, shuffled by ``numpy.random.default_rng([seed, crc32(group)])``
  and cut by fractions with largest-remainder rounding; a file is rewritten only when its content changes and
  CSVs of an earlier run that are no longer produced are removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.base import HEALTHY_TEST_SET
from datamodules.errors import DataError
from datamodules.nifti import MODALITY_PREFIX
from datamodules.preprocessing import is_2d_image

HEALTHY = HEALTHY_TEST_SET
SPLITS = ("train", "val", "unlabelled", "test")
MANIFEST = "prepare.json"
REPORT = "prepare_report.txt"


class ReleaseError(DataError):
    """A release failed validation; the message is the full report."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a release: what, and where (subject and / or file)."""

    message: str
    subject: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        where = " ".join(x for x in (f"[{self.subject}]" if self.subject else "", str(self.path or "")) if x)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class Subject:
    """One subject (volume or image) of a release.

    ``files`` maps split-CSV columns to files: ``image_<modality>`` for each modality, ``mask`` and ``roi``.
    ``group`` is ``healthy`` or the pathology, which names its test set (``test_<group>.csv``). A release with
    official splits sets ``split``. The same id may appear with several groups (FastMRI+ images with two
    pathologies); it then gets one split and is listed in each group's test set. ``patient`` is the unit of
    splitting when one person has several rows (time points, 2D slices); it defaults to ``id``.
    """

    id: str
    group: str
    files: dict[str, Path]
    mask_labels: tuple[int, ...] | None = None
    roi_labels: tuple[int, ...] | None = None
    split: str | None = None
    mask_values: frozenset[int] | None = None  # allowed values of the mask file (None: the release's default)
    extra: dict[str, str] = field(default_factory=dict)  # informative columns for the manifest (grade, site...)
    patient: str | None = None

    @property
    def unit(self) -> str:
        """The split unit: the patient, else the row id."""
        return self.patient or self.id


class Release(ABC):
    """One official dataset layout. Subclasses set the class attributes and implement :meth:`scan`.

    Constructor keyword arguments are the release's options (``prepare ... --set key=value``); ``modalities``
    selects which modalities are required and written (default: all of :attr:`modalities`).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    layout: ClassVar[str]  # the expected folder layout, shown in errors and the README
    modalities: ClassVar[tuple[str, ...]] = ()
    mask_values: ClassVar[frozenset[int]] = frozenset({0, 1})
    roi_values: ClassVar[frozenset[int] | None] = frozenset({0, 1})  # None: label map (roi_labels select)
    # fractions of each kind of group's subjects per split, for groups without an official split
    healthy_split: ClassVar[Mapping[str, float]] = {"train": 0.8, "val": 0.1, "test": 0.1}
    pathology_split: ClassVar[Mapping[str, float]] = {"test": 1.0}
    # image modalities share one voxel grid (checked); IXI's T1 and T2 / PD are acquired separately, so not there
    coregistered: ClassVar[bool] = True
    # set by prepare() before scan(): adapters that derive files (FastMRI+ box masks) write them below it
    out: Path | None = None

    def __init__(self, root: str | Path, modalities: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()  # CSVs hold absolute paths
        if not self.root.is_dir():
            raise ReleaseError(f"{self.title}: release folder {self.root} does not exist or is not a folder.\n"
                               f"Expected layout:\n{self.layout}")
        chosen = tuple(modalities) if modalities else self.modalities
        unknown = [m for m in chosen if m not in self.modalities]
        if unknown:
            raise ReleaseError(f"{self.title}: unknown modality {unknown}; this release has {list(self.modalities)}")
        self.selected = chosen

    @abstractmethod
    def scan(self) -> tuple[list[Subject], list[Problem]]:
        """Every subject of the release and every problem met while finding them."""

    def options(self) -> dict[str, object]:
        """The release options as recorded in the manifest (subclasses add theirs)."""
        return {"modalities": list(self.selected)}

    # helpers for subclasses ------------------------------------------------------------------------------------
    def require_modalities(self, subject: str, found: Mapping[str, Path], folder: Path) -> list[Problem]:
        """Problems for each selected modality missing from ``found``."""
        return [Problem(f"missing {m} image (expected in {folder})", subject, folder)
                for m in self.selected if m not in found]

    def image_columns(self, found: Mapping[str, Path]) -> dict[str, Path]:
        return {MODALITY_PREFIX + m: found[m] for m in self.selected if m in found}


# -------------------------------------------------------------------------------------------- scanning helpers
def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def nifti_files(folder: Path) -> list[Path]:
    """Every NIfTI file below ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_nifti(p))


# ------------------------------------------------------------------------------------------------- validation
def _read(path: Path, headers_only: bool) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray | None]:
    """(shape, affine or None, data or None) of a NIfTI or 2D image file; raises on unreadable files."""
    if is_2d_image(path):
        with Image.open(path) as picture:
            if headers_only:
                return (picture.height, picture.width), None, None
            picture.load()
            data = np.asarray(picture)
        if data.ndim == 3:
            data = data[..., 0]
        return data.shape, None, data
    image = nib.load(str(path))
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return shape, image.affine, None if headers_only else np.asanyarray(image.dataobj)


def _values(data: np.ndarray) -> set[float]:
    return {float(v) for v in np.unique(data)[:50]}


def check_subject(subject: Subject, release: Release, headers_only: bool = False) -> list[Problem]:
    """Read every file of a subject: readable, finite image, same grid as the first image, allowed mask values."""
    problems: list[Problem] = []
    reference: tuple[str, tuple[int, ...], np.ndarray | None] | None = None
    for column, path in sorted(subject.files.items(), key=lambda item: not item[0].startswith(MODALITY_PREFIX)):
        if not path.is_file():
            problems.append(Problem(f"{column} file not found", subject.id, path))
            continue
        try:
            shape, affine, data = _read(path, headers_only)
        except (OSError, EOFError, ValueError, UnidentifiedImageError, nib.filebasedimages.ImageFileError,
                zlib.error) as error:
            problems.append(Problem(f"unreadable {column} file ({type(error).__name__}: {error})", subject.id, path))
            continue
        # separately acquired modalities (IXI's T1 vs T2 / PD) are each used on their own: never compared
        compared = release.coregistered or not column.startswith(MODALITY_PREFIX)
        if reference is None:
            reference = (column, shape, affine)
        elif compared and shape != reference[1]:
            problems.append(Problem(f"{column} has shape {shape} but {reference[0]} has {reference[1]}; they must "
                                    "be voxel-aligned", subject.id, path))
        elif compared and affine is not None and reference[2] is not None and not np.allclose(affine, reference[2],
                                                                                                 atol=1e-3):
            problems.append(Problem(f"{column} has another affine (orientation / voxel grid) than {reference[0]}; "
                                    "it is not on the image's grid", subject.id, path))
        if data is None:
            continue
        if column.startswith(MODALITY_PREFIX):
            if not np.issubdtype(data.dtype, np.integer) and not np.isfinite(data).all():
                problems.append(Problem(f"{column} contains {int((~np.isfinite(data)).sum())} NaN/Inf values",
                                        subject.id, path))
            continue
        allowed = subject.mask_values or release.mask_values if column == "mask" else release.roi_values
        if is_2d_image(path) and allowed == frozenset({0, 1}):
            allowed = frozenset({0, 1, 255})
        found = _values(data)
        if allowed is not None and not found <= {float(v) for v in allowed}:
            unexpected = sorted(found - {float(v) for v in allowed})
            problems.append(Problem(f"{column} has unexpected label value(s) {unexpected[:8]}; this release's "
                                    f"{column} values are {sorted(allowed)}", subject.id, path))
    return problems


# ----------------------------------------------------------------------------------------------------- splits
def parse_fractions(text: str | Mapping[str, float], what: str) -> dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` (or a mapping) as fractions over SPLITS that sum to 1."""
    if isinstance(text, str):
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ReleaseError(f"{what} {text!r}: write split=fraction pairs, e.g. train=0.8,val=0.1,test=0.1")
        try:
            fractions = {k.strip(): float(v) for k, v in pairs}
        except ValueError:
            raise ReleaseError(f"{what} {text!r}: fractions must be numbers") from None
    else:
        fractions = {k: float(v) for k, v in text.items()}
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ReleaseError(f"{what}: unknown split(s) {unknown}; choose from {list(SPLITS)}")
    if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ReleaseError(f"{what}: fractions must be >= 0 and sum to 1, got {fractions}")
    return {k: v for k, v in fractions.items() if v > 0}


def _cut(ids: list[str], fractions: Mapping[str, float], rng: np.random.Generator) -> dict[str, str]:
    """Assign shuffled ids to splits: largest-remainder counts, every split with a fraction > 0 gets one when it can."""
    order = [ids[i] for i in rng.permutation(len(ids))]
    names = [s for s in SPLITS if s in fractions]
    exact = np.array([fractions[s] * len(ids) for s in names])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: len(ids) - counts.sum()]:
        counts[i] += 1
    for i in range(len(names)):  # a split asked for but rounded to zero takes one from the largest
        if counts[i] == 0 and len(ids) >= len(names):
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {subject: names[k] for k in range(len(names)) for subject in order[bounds[k]:bounds[k + 1]]}


def assign_splits(subjects: Sequence[Subject], healthy: Mapping[str, float], pathology: Mapping[str, float],
                  seed: int) -> dict[str, str]:
    """Split unit (patient, else id) -> split. Official splits first; then group by group (healthy first)."""
    assigned: dict[str, str] = {}
    conflicts = []
    for subject in subjects:
        if subject.split is not None:
            previous = assigned.setdefault(subject.unit, subject.split)
            if previous != subject.split:
                conflicts.append(f"subject {subject.unit!r} is in the official {previous!r} and {subject.split!r} "
                                 "splits; a subject may be in one split only")
    if conflicts:
        raise ReleaseError("\n".join(sorted(set(conflicts))))
    groups = sorted({s.group for s in subjects}, key=lambda g: (g != HEALTHY, g))
    for group in groups:
        units = sorted({s.unit for s in subjects if s.group == group and s.unit not in assigned})
        if units:
            rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
            assigned.update(_cut(units, healthy if group == HEALTHY else pathology, rng))
    return assigned


def split_tables(subjects: Sequence[Subject], assigned: Mapping[str, str]) -> dict[str, list[dict[str, str]]]:
    """CSV file stem -> rows: train / val / unlabelled once per subject, test once per (subject, group)."""
    columns = sorted({c for s in subjects for c in s.files if c.startswith(MODALITY_PREFIX)})
    tables: dict[str, list[dict[str, str]]] = {}
    seen: set[tuple[str, str]] = set()
    for subject in sorted(subjects, key=lambda s: (s.id, s.group)):
        split = assigned[subject.unit]
        stem = f"test_{subject.group}" if split == "test" else split
        if (stem, subject.id) in seen:
            continue
        seen.add((stem, subject.id))
        row = {"subject": subject.id}
        row.update({c: str(subject.files[c]) if c in subject.files else "" for c in columns})
        row["mask"] = str(subject.files["mask"]) if "mask" in subject.files else ""
        row["mask_labels"] = " ".join(map(str, subject.mask_labels)) if subject.mask_labels else ""
        row["roi"] = str(subject.files["roi"]) if "roi" in subject.files else ""
        row["roi_labels"] = " ".join(map(str, subject.roi_labels)) if subject.roi_labels else ""
        tables.setdefault(stem, []).append(row)
    return tables


# ---------------------------------------------------------------------------------------------------- writing
def _csv_text(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    for optional in ("mask", "mask_labels", "roi", "roi_labels"):  # drop columns that are empty everywhere
        if all(not r[optional] for r in rows):
            columns.remove(optional)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_if_changed(path: Path, content: str | bytes) -> bool:
    """Write ``content`` atomically unless the file already holds it (so re-running changes no file and no
    modification time); True when written. Derived files of adapters (masks) use it too."""
    data = content.encode() if isinstance(content, str) else content
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
    return True


@dataclass
class PrepareResult:
    """What :func:`prepare` did."""

    out: Path
    counts: dict[str, int]  # CSV stem -> rows
    skipped: dict[str, list[str]]  # subject -> its problems (only with skip_invalid)
    written: list[str]  # files written (changed) this time
    report: str


def _format_report(release: Release, subjects: Sequence[Subject], problems: Sequence[Problem],
                   counts: Mapping[str, int] | None, skipped: Mapping[str, list[str]], fatal: bool) -> str:
    lines = [f"{release.title} release at {release.root}", f"subjects found: {len({s.unit for s in subjects})}"]
    if problems:
        lines.append(f"problems: {len(problems)}" + (" (these subjects are left out: --skip-invalid)"
                                                      if skipped and not fatal else ""))
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append("problems: none")
    if counts:
        lines.append("split CSVs (rows): " + ", ".join(f"{k}.csv {v}" for k, v in sorted(counts.items())))
    if fatal:
        lines.append("No split CSV was written. Fix the files above, or pass --skip-invalid to leave these subjects "
                     "out (they are then listed in prepare.json).")
        lines.append(f"Expected layout:\n{release.layout}")
    return "\n".join(lines)


def prepare(release: Release, out: str | Path, seed: int = 0, healthy_split: str | Mapping[str, float] | None = None,
            pathology_split: str | Mapping[str, float] | None = None, skip_invalid: bool = False,
            headers_only: bool = False, workers: int | None = None) -> PrepareResult:
    """Scan, validate, split and write (see the module docstring). Raises :class:`ReleaseError` with the report."""
    out = Path(out)
    healthy = parse_fractions(healthy_split or release.healthy_split, "healthy split")
    pathology = parse_fractions(pathology_split or release.pathology_split, "pathology split")
    release.out = out
    subjects, problems = release.scan()
    subjects = sorted(subjects, key=lambda s: (s.id, s.group))
    if not subjects:
        report = _format_report(release, subjects, [*problems, Problem("no subject found in the release folder")],
                                None, {}, fatal=True)
        write_if_changed(out / REPORT, report + "\n")
        raise ReleaseError(report)
    unique = {s.id: s for s in subjects}  # files are the same for every group of an id
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        checked = list(pool.map(lambda s: check_subject(s, release, headers_only), unique.values()))
    problems = [*problems, *(p for found in checked for p in found)]
    try:
        assigned = assign_splits(subjects, healthy, pathology, seed)
    except ReleaseError as error:
        problems += [Problem(line) for line in str(error).splitlines()]
        assigned = {}
    units = {s.id: s.unit for s in subjects}
    bad = {units.get(p.subject, p.subject) for p in problems if p.subject is not None}  # a patient goes whole
    fatal = bool(problems) and (not skip_invalid or any(p.subject is None for p in problems))
    skipped = {unit: [p.message for p in problems if p.subject is not None and units.get(p.subject, p.subject) == unit]
               for unit in sorted(bad)} if skip_invalid else {}
    if fatal:
        report = _format_report(release, subjects, problems, None, skipped, fatal=True)
        write_if_changed(out / REPORT, report + "\n")
        raise ReleaseError(report)
    kept = [s for s in subjects if s.unit not in bad]
    if not kept:
        raise ReleaseError(_format_report(release, subjects, problems, None, skipped, fatal=True))
    tables = split_tables(kept, assigned)
    counts = {stem: len(rows) for stem, rows in tables.items()}
    report = _format_report(release, subjects, problems, counts, skipped, fatal=False)

    previous = json.loads((out / MANIFEST).read_text()).get("csvs", {}) if (out / MANIFEST).is_file() else {}
    written = [f"{stem}.csv" for stem, rows in tables.items() if write_if_changed(out / f"{stem}.csv", _csv_text(rows))]
    for stale in sorted(set(previous) - {f"{stem}.csv" for stem in tables}):
        (out / stale).unlink(missing_ok=True)
    manifest = {
        "release": release.name,
        "title": release.title,
        "root": str(release.root.resolve()),
        "seed": seed,
        "options": release.options(),
        "healthy_split": healthy,
        "pathology_split": pathology,
        "check": "headers" if headers_only else "full",
        "csvs": {f"{stem}.csv": count for stem, count in sorted(counts.items())},
        "subjects": {split: sorted({s.unit for s in kept if assigned[s.unit] == split}) for split in SPLITS},
        "groups": {g: sorted({s.id for s in kept if s.group == g}) for g in sorted({s.group for s in kept})},
        "skipped": skipped,
    }
    for name, text in ((MANIFEST, json.dumps(manifest, indent=1) + "\n"), (REPORT, report + "\n")):
        if write_if_changed(out / name, text):
            written.append(name)
    return PrepareResult(out=out, counts=counts, skipped=skipped, written=written, report=report)
