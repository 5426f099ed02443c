"""FastMRI+ brain (Zhao et al., Sci Data 2022): one exported slice per fastMRI volume, with FastMRI+ box labels.

The layout is that of GenAI (Bercea et al., Nat. Commun. 2025): a folder ``brain_mid_png`` with one 8-bit grey PNG
per fastMRI brain volume (its mid-axial slice; GenAI uses AXT1, ``file_brain_AXT1_201_6002717.png``) and the
FastMRI+ annotation table ``brain.csv`` (github microsoft/fastmri-plus, ``Annotations/brain.csv``; columns
``file,slice,study_level,x,y,width,height,label``; one row per box, ``study_level`` "Yes" rows have no box).

**Which slice a PNG shows** (the slice index is not stored in the PNG): the PNG name ``<file>_<slice>.png``
(``file_brain_AXT1_201_6002717_7.png``) or a row ``file,slice`` in ``slices.csv`` (``--set slices=PATH``); both
may be given and must agree. Only images whose volume has box rows need it: an image without it is a problem.

**Groups.** Every PNG becomes one of:

* ``healthy``: its file has no row in the annotation table at all (FastMRI+ lists only volumes with findings). With
  ``brain_file_list.csv`` (FastMRI+'s list of reviewed volumes; ``--set file_list=PATH``) a PNG must also be
  listed there; an unreviewed one is excluded (``not_reviewed``). Without the list every PNG counts as reviewed.
  Split train / val / test as GenAI's 131 / 15 / 30 (fractions 131/176, 15/176, 30/176).
* one subject per pathology set with a box on its slice (same id; the engine lists it in each set's test CSV).
  ``mask`` = the union of that set's boxes (a derived PNG under ``OUT/masks``); ``roi`` = the brain mask (or the
  whole image, or its filled foreground with ``foreground_roi``) minus the boxes of every *other* finding on the
  slice, plus the set's own boxes (so the lesion is always inside the roi), as a derived PNG under ``OUT/rois``.
  Other findings are thus neither lesion nor healthy tissue. All pathology images go to test.
* excluded and counted in ``prepare.json`` (``options.excluded``): study-level rows only (``study_level_only``),
  boxes only on other slices of the volume (``no_box_on_slice``), boxes on the slice whose labels map to no set
  (``unmapped_labels_only``; the counts per label are in ``options.unmapped_boxes``), ``not_reviewed``. None of
  these is healthy: the volume has a finding.

**Label -> set** (the 13 GenAI sets, names as spelled in its CSVs; protocols.md section 8). Labels compare
case-insensitively, with spaces collapsed::

    absent_septum        Absent septum pellucidum
    craniatomy           Craniotomy, Craniectomy (GenAI: 14 craniotomy + 1 craniectomy);
                         Craniectomy with Cranioplasty, Craniotomy with Cranioplasty [UNVERIFIED]
    dural                Dural thickening
    edema                Edema
    encephalomalacia     Encephalomalacia
    enlarged_ventricles  Enlarged ventricles
    intraventricular     Intraventricular substance
    lesions              Nonspecific lesion
    posttreatment        Posttreatment change
    resection            Resection cavity
    sinus                Paranasal sinus opacification
    wml                  Nonspecific white matter lesion
    mass_all             Mass, Extra-axial mass

Known box labels in no set (GenAI has no results for them: artefacts, "local", "other"): Lacunar infarct, Likely
cysts, Pineal cyst, Normal variant, Possible artifact, Motion artifact, Extra-axial collection [UNVERIFIED which of
GenAI's groups they fell in]. A box label on an image's slice that is in neither list is a problem for that image
(a newer or edited annotation table: extend the tables here rather than guess).

**Boxes** are pixel coordinates ``x`` (column), ``y`` (row) of the top-left corner, ``width``, ``height`` on the
image FastMRI+ was labelled on: the 320 x 320 ``reconstruction_rss`` slice flipped up / down (fastmri-plus README).
A box covers columns ``[x, x + width)`` and rows ``[y, y + height)`` (``width * height`` pixels). By default the
boxes apply to the PNG as they are (the PNG is exported in the labelling orientation, at that size) [UNVERIFIED:
GenAI's export is not public]. ``--set flip=true``: the PNG is ``reconstruction_rss`` as stored (not flipped), so
box rows are mirrored; ``--set box_grid=320x320``: the boxes refer to a grid of that size and are scaled to the PNG
(a resized export; padded or cropped exports are not supported). A box outside the PNG is a problem (wrong
``box_grid`` / export); ``--set clip_boxes=true`` clips boxes that only cross the border.

Optional brain masks ``brain_masks/<file>.png`` (0/1 or 0/255, the PNG's size): when the folder exists every image
needs one. Derived masks and rois are rewritten only when their content changes; they are written while scanning,
so they exist even when prepare then stops on a problem (the split CSVs do not).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.preprocessing import filled_foreground
from datamodules.releases.base import Problem, Release, ReleaseError, Subject, write_if_changed

LAYOUT = """\
  ROOT/
    brain_mid_png/file_brain_AXT1_201_6002717.png      one 8-bit grey PNG per fastMRI volume (name = the file stem)
    brain_mid_png/file_brain_AXT1_201_6002717_7.png    ... or with the slice index it shows (here 7)
    brain.csv                  FastMRI+ annotations (microsoft/fastmri-plus Annotations/brain.csv; --set annotations=)
    slices.csv                 optional: columns file,slice (the slice each PNG shows; --set slices=PATH)
    brain_file_list.csv        optional: FastMRI+'s reviewed volumes, one per line (--set file_list=PATH)
    brain_masks/file_brain_AXT1_201_6002717.png        optional: brain mask of each image (0/1 or 0/255)
  Only these are read. Non-PNG files in brain_mid_png (.DS_Store, notes) are ignored; every PNG must be named
  file_brain_<ACQ>_<site>_<number>[_<slice>].png."""

GROUP_LABELS: dict[str, tuple[str, ...]] = {
    "absent_septum": ("Absent septum pellucidum",),
    "craniatomy": ("Craniotomy", "Craniectomy", "Craniectomy with Cranioplasty", "Craniotomy with Cranioplasty"),
    "dural": ("Dural thickening",),
    "edema": ("Edema",),
    "encephalomalacia": ("Encephalomalacia",),
    "enlarged_ventricles": ("Enlarged ventricles",),
    "intraventricular": ("Intraventricular substance",),
    "lesions": ("Nonspecific lesion",),
    "posttreatment": ("Posttreatment change",),
    "resection": ("Resection cavity",),
    "sinus": ("Paranasal sinus opacification",),
    "wml": ("Nonspecific white matter lesion",),
    "mass_all": ("Mass", "Extra-axial mass"),
}
UNMAPPED_LABELS = ("Lacunar infarct", "Likely cysts", "Pineal cyst", "Normal variant", "Possible artifact",
                   "Motion artifact", "Extra-axial collection")
COLUMNS = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
EXCLUSIONS = ("study_level_only", "no_box_on_slice", "unmapped_labels_only", "not_reviewed")
GREY_MODES = ("L", "LA", "RGB", "RGBA")  # RGB(A) must be grey in every channel (checked when slices are cached)

_PNG = re.compile(r"^(?P<file>file_brain_(?P<acq>[A-Za-z0-9]+)_\d+_\d+)(?:_(?P<slice>\d+))?\.png$", re.IGNORECASE)


def _norm(label: str) -> str:
    return " ".join(label.split()).casefold()


_LABEL_GROUP = {_norm(label): group for group, labels in GROUP_LABELS.items() for label in labels}
_KNOWN = set(_LABEL_GROUP) | {_norm(label) for label in UNMAPPED_LABELS}


def _flag(value: bool | str, name: str) -> bool:
    """A boolean option given as a bool or as ``--set`` text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ReleaseError(f"FastMRI+ option {name}={value!r}: write true or false")


def _integer(value: str) -> int | None:
    """``value`` as an int when it is a whole number ("12", "12.0"), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


@dataclass(frozen=True)
class Box:
    """One annotation box: label, and its extent in the annotation grid (columns x0:x1, rows y0:y1)."""

    label: str
    x0: int
    y0: int
    x1: int
    y1: int

    def __str__(self) -> str:
        return f"{self.label!r} x={self.x0} y={self.y0} width={self.x1 - self.x0} height={self.y1 - self.y0}"


@dataclass
class Annotations:
    """The annotation rows of one fastMRI file: box rows (slice, row number, fields) and study-level labels."""

    boxes: list[tuple[int, dict[str, str]]]
    study_level: list[str]


def write_png_if_changed(path: Path, array: np.ndarray) -> bool:
    """Write a 2D uint8 array as PNG (atomically) unless the file already holds exactly these bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return write_if_changed(path, buffer.getvalue())


class FastMRIRelease(Release):
    name = "fastmri"
    title = "FastMRI+ brain (mid-slice PNGs with FastMRI+ box annotations)"
    layout = LAYOUT
    modalities = ("t1",)
    # GenAI's healthy FastMRI split: 131 / 15 / 30 of 176 images
    healthy_split: ClassVar[Mapping[str, float]] = {"train": 131 / 176, "val": 15 / 176, "test": 30 / 176}
    pathology_split: ClassVar[Mapping[str, float]] = {"test": 1.0}

    def __init__(self, root: str | Path, modalities=None, annotations: str | None = None, slices: str | None = None,
                 file_list: str | None = None, brain_masks: str | None = None, acquisitions: str = "AXT1",
                 flip: bool | str = False, box_grid: str | None = None, clip_boxes: bool | str = False,
                 foreground_roi: bool | str = False) -> None:
        super().__init__(root, modalities)
        self.annotations = self._path(annotations, "brain.csv")
        self.slices = self._path(slices, "slices.csv")
        self.file_list = self._path(file_list, "brain_file_list.csv")
        self.brain_masks = self._path(brain_masks, "brain_masks")
        for option, given, path, folder in (("annotations", annotations, self.annotations, False),
                                            ("slices", slices, self.slices, False),
                                            ("file_list", file_list, self.file_list, False),
                                            ("brain_masks", brain_masks, self.brain_masks, True)):
            if given and not (path.is_dir() if folder else path.is_file()):
                raise ReleaseError(f"FastMRI+ option {option}={given}: {path} is not an existing "
                                   f"{'folder' if folder else 'file'}")
        self.acquisitions = tuple(a.strip().upper() for a in str(acquisitions).split(",") if a.strip())
        if not self.acquisitions:
            raise ReleaseError("FastMRI+ option acquisitions: name at least one, e.g. AXT1 or AXT1,AXT1POST")
        self.flip = _flag(flip, "flip")
        self.clip_boxes = _flag(clip_boxes, "clip_boxes")
        self.foreground_roi = _flag(foreground_roi, "foreground_roi")
        self.box_grid = self._grid(box_grid)
        self.excluded: dict[str, list[str]] = {reason: [] for reason in EXCLUSIONS}
        self.unmapped_boxes: Counter[str] = Counter()

    # ---------------------------------------------------------------------------------------------------- options
    def _path(self, given: str | None, default: str) -> Path:
        """An option's path (relative to the working directory, like --root), else its default in ROOT."""
        return Path(given).expanduser().resolve() if given else self.root / default

    @staticmethod
    def _grid(text: str | None) -> tuple[int, int] | None:
        """``320`` or ``320x320`` (width x height) -> (width, height)."""
        if text is None or str(text).strip().lower() in ("", "none", "null"):
            return None
        parts = str(text).lower().replace(" ", "").split("x")
        sizes = [_integer(p) for p in parts]
        if len(parts) not in (1, 2) or any(s is None or s < 1 for s in sizes):
            raise ReleaseError(f"FastMRI+ option box_grid={text!r}: write the annotation grid as 320 or 320x320 "
                               "(width x height)")
        return (sizes[0], sizes[-1])

    def options(self) -> dict[str, object]:
        return {
            **super().options(),
            "annotations": str(self.annotations),
            "slices": str(self.slices) if self.slices.is_file() else None,
            "file_list": str(self.file_list) if self.file_list.is_file() else None,
            "brain_masks": str(self.brain_masks) if self.brain_masks.is_dir() else None,
            "acquisitions": list(self.acquisitions),
            "flip": self.flip,
            "box_grid": list(self.box_grid) if self.box_grid else None,
            "clip_boxes": self.clip_boxes,
            "foreground_roi": self.foreground_roi,
            "excluded": {reason: len(files) for reason, files in self.excluded.items()},
            "excluded_files": {reason: files for reason, files in self.excluded.items() if files},
            "unmapped_boxes": dict(sorted(self.unmapped_boxes.items())),
            "label_sets": {group: list(labels) for group, labels in GROUP_LABELS.items()},
        }

    # ----------------------------------------------------------------------------------------------- table reading
    def _read_annotations(self) -> dict[str, Annotations]:
        if not self.annotations.is_file():
            raise ReleaseError(f"{self.title}: annotation table {self.annotations} not found (FastMRI+ brain.csv "
                               f"from github.com/microsoft/fastmri-plus, Annotations/brain.csv; or --set "
                               f"annotations=PATH).\nExpected layout:\n{self.layout}")
        with open(self.annotations, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ReleaseError(f"{self.annotations}: not a FastMRI+ annotation table, missing column(s) "
                                   f"{missing}; expected {','.join(COLUMNS)}")
            table: dict[str, Annotations] = {}
            for number, row in enumerate(reader, start=2):
                row = {k: (row.get(k) or "").strip() for k in COLUMNS}
                entry = table.setdefault(row["file"], Annotations([], []))
                if row["study_level"].lower() == "yes":
                    entry.study_level.append(row["label"])
                else:
                    entry.boxes.append((number, row))
        return table

    def _read_slices(self) -> tuple[dict[str, int], list[Problem]]:
        """file -> slice index from the mapping CSV (if any), and problems of its rows."""
        if not self.slices.is_file():
            return {}, []
        with open(self.slices, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not {"file", "slice"} <= set(reader.fieldnames or []):
                raise ReleaseError(f"{self.slices}: the slice mapping needs the columns file,slice; found "
                                   f"{reader.fieldnames}")
            mapping: dict[str, int] = {}
            problems = []
            for number, row in enumerate(reader, start=2):
                file, value = (row.get("file") or "").strip(), _integer((row.get("slice") or "").strip())
                file = file.removesuffix(".png").removesuffix(".h5")
                if value is None or value < 0:
                    problems.append(Problem(f"{self.slices.name} row {number}: slice {row.get('slice')!r} is not a "
                                            "slice index", file or None, self.slices))
                elif mapping.setdefault(file, value) != value:
                    problems.append(Problem(f"{self.slices.name} gives two slices ({mapping[file]} and {value})",
                                            file, self.slices))
        return mapping, problems

    def _reviewed(self) -> set[str] | None:
        if not self.file_list.is_file():
            return None
        names = (line.strip().split(",")[0].strip() for line in self.file_list.read_text().splitlines())
        return {n.removesuffix(".h5") for n in names if n and n.lower() != "file"}

    # ---------------------------------------------------------------------------------------------------- images
    def _find_pngs(self) -> tuple[dict[str, tuple[Path, int | None]], list[Problem]]:
        """file stem -> (PNG, slice from its name or None); problems of names, acquisitions and duplicates."""
        folder = self.root / "brain_mid_png"
        if not folder.is_dir():
            raise ReleaseError(f"{self.title}: no folder {folder}.\nExpected layout:\n{self.layout}")
        found: dict[str, list[tuple[Path, int | None]]] = {}
        problems = []
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() != ".png":
                continue
            match = _PNG.match(path.name)
            if match is None:
                problems.append(Problem("PNG name is not a fastMRI file stem (file_brain_<ACQ>_<site>_<number>"
                                        "[_<slice>].png)", path.stem, path))
                continue
            if match["acq"].upper() not in self.acquisitions:
                problems.append(Problem(f"acquisition {match['acq']} is not selected (acquisitions="
                                        f"{','.join(self.acquisitions)}); remove the PNG or add it with --set "
                                        f"acquisitions=...", match["file"], path))
                continue
            found.setdefault(match["file"], []).append((path, int(match["slice"]) if match["slice"] else None))
        pngs = {}
        for file, entries in found.items():
            if len(entries) > 1:
                problems.append(Problem(f"{len(entries)} PNGs for one volume: {', '.join(p.name for p, _ in entries)}",
                                        file, folder))
            else:
                pngs[file] = entries[0]
        return pngs, problems

    def _brain_mask_problems(self, pngs: Mapping[str, object]) -> list[Problem]:
        if not self.brain_masks.is_dir():
            return []
        problems = [Problem("brain mask missing (the brain_masks folder exists, so every image needs one)", file,
                            self.brain_masks / f"{file}.png")
                    for file in pngs if not (self.brain_masks / f"{file}.png").is_file()]
        for path in sorted(self.brain_masks.glob("*.png")):
            if path.stem not in pngs:
                problems.append(Problem("brain mask without an image in brain_mid_png", path.stem, path))
        return problems

    def _slice_of(self, file: str, from_name: int | None, mapping: Mapping[str, int], path: Path
                  ) -> tuple[int | None, list[Problem]]:
        from_csv = mapping.get(file)
        if from_name is not None and from_csv is not None and from_name != from_csv:
            return None, [Problem(f"the PNG name says slice {from_name} but {self.slices.name} says {from_csv}",
                                  file, path)]
        chosen = from_name if from_name is not None else from_csv
        if chosen is None:
            return None, [Problem("the volume has annotation boxes but the slice this PNG shows is unknown: name it "
                                  f"{file}_<slice>.png or list it in slices.csv (file,slice)", file, path)]
        return chosen, []

    def _boxes(self, file: str, rows: list[tuple[int, dict[str, str]]], index: int) -> tuple[list[Box], list[Problem]]:
        """The boxes on slice ``index`` (annotation grid), and problems of the file's box rows."""
        boxes, problems = [], []
        for number, row in rows:
            where = f"{self.annotations.name} row {number}"
            row_slice = _integer(row["slice"])
            if row_slice is None:
                problems.append(Problem(f"{where}: slice {row['slice']!r} is not an integer", file, self.annotations))
                continue
            if row_slice != index:
                continue
            values = [_integer(row[k]) for k in ("x", "y", "width", "height")]
            if any(v is None for v in values) or values[2] <= 0 or values[3] <= 0:
                problems.append(Problem(f"{where}: box x={row['x']!r} y={row['y']!r} width={row['width']!r} "
                                        f"height={row['height']!r} is not a box of whole pixels", file,
                                        self.annotations))
                continue
            x, y, w, h = values
            boxes.append(Box(row["label"], x, y, x + w, y + h))
        return boxes, problems

    def _place(self, box: Box, size: tuple[int, int], file: str, path: Path) -> tuple[tuple[slice, slice] | None,
                                                                                     list[Problem]]:
        """Rows / columns of ``box`` in the PNG (width, height = ``size``): scaled, flipped, checked."""
        width, height = size
        grid = self.box_grid or size
        x0, x1 = (round(v * width / grid[0]) for v in (box.x0, box.x1))
        y0, y1 = (round(v * height / grid[1]) for v in (box.y0, box.y1))
        if self.flip:
            y0, y1 = height - y1, height - y0
        inside = x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
        overlaps = x0 < width and x1 > 0 and y0 < height and y1 > 0
        if not inside and not (self.clip_boxes and overlaps):
            hint = "" if overlaps else " (entirely outside)"
            return None, [Problem(f"box {box} lies outside the {width}x{height} image{hint}; check box_grid / flip, "
                                  "or --set clip_boxes=true for boxes that cross the border", file, path)]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        return (slice(y0, y1), slice(x0, x1)), []

    def _base_region(self, file: str, png: Path, size: tuple[int, int]) -> tuple[np.ndarray | None, list[Problem]]:
        """The region a roi starts from: brain mask, filled foreground, or None (the whole image)."""
        mask_path = self.brain_masks / f"{file}.png"
        if self.brain_masks.is_dir():
            if not mask_path.is_file():
                return None, []  # reported once, by _brain_mask_problems
            try:
                with Image.open(mask_path) as picture:
                    data = np.asarray(picture.convert("L"))
            except (OSError, UnidentifiedImageError, ValueError) as error:
                return None, [Problem(f"unreadable brain mask ({type(error).__name__}: {error})", file, mask_path)]
            if data.shape != (size[1], size[0]):
                return None, [Problem(f"brain mask has shape {data.shape} but the image has {(size[1], size[0])}",
                                      file, mask_path)]
            if not set(np.unique(data).tolist()) <= {0, 1, 255}:
                return None, [Problem(f"brain mask is not binary (values {np.unique(data)[:6].tolist()}); expected "
                                      "0/1 or 0/255", file, mask_path)]
            return data > 0, []
        if self.foreground_roi:
            try:
                with Image.open(png) as picture:
                    data = np.asarray(picture.convert("L"), dtype=np.float32)
            except (OSError, UnidentifiedImageError, ValueError) as error:
                return None, [Problem(f"unreadable image ({type(error).__name__}: {error})", file, png)]
            return filled_foreground(data), []
        return None, []

    @staticmethod
    def _header(png: Path) -> tuple[tuple[int, int] | None, str]:
        """(width, height) and mode of a PNG; (None, why) when it cannot be opened."""
        try:
            with Image.open(png) as picture:
                return picture.size, picture.mode
        except (OSError, UnidentifiedImageError, ValueError) as error:
            return None, f"{type(error).__name__}: {error}"

    # ------------------------------------------------------------------------------------------------------ scan
    def scan(self) -> tuple[list[Subject], list[Problem]]:
        if self.out is None:
            raise ReleaseError(f"{self.title}: the release derives mask files; set .out (prepare() does) first")
        self.excluded = {reason: [] for reason in EXCLUSIONS}
        self.unmapped_boxes = Counter()
        pngs, problems = self._find_pngs()
        table = self._read_annotations()
        mapping, mapping_problems = self._read_slices()
        reviewed = self._reviewed()
        problems += mapping_problems + self._brain_mask_problems(pngs)
        subjects = []
        for file, (png, from_name) in sorted(pngs.items()):
            size, mode = self._header(png)
            if size is None:
                problems.append(Problem(f"unreadable image ({mode})", file, png))
                continue
            if mode not in GREY_MODES:
                problems.append(Problem(f"PNG mode {mode}: expected an 8-bit grey image (mode L); the dataset "
                                        "config reads intensities in [0, 255]", file, png))
                continue
            entry = table.get(file)
            if entry is None:
                if reviewed is not None and file not in reviewed:
                    self.excluded["not_reviewed"].append(file)
                    continue
                found, found_problems = self._healthy(file, png, size)
            elif not entry.boxes:
                self.excluded["study_level_only"].append(file)
                continue
            else:
                found, found_problems = self._pathological(file, png, size, from_name, entry, mapping)
            subjects += found
            problems += found_problems
        return subjects, problems

    def _healthy(self, file: str, png: Path, size: tuple[int, int]) -> tuple[list[Subject], list[Problem]]:
        files = self.image_columns({"t1": png})
        if (self.brain_masks / f"{file}.png").is_file():
            files["roi"] = self.brain_masks / f"{file}.png"  # read and checked by prepare
        elif self.foreground_roi:
            base, problems = self._base_region(file, png, size)
            if problems:
                return [], problems
            files["roi"] = self.out / "rois" / f"{file}_healthy.png"
            write_png_if_changed(files["roi"], base.astype(np.uint8) * 255)
        return [Subject(id=file, group="healthy", files=files)], []

    def _pathological(self, file: str, png: Path, size: tuple[int, int], from_name: int | None,
                      entry: Annotations, mapping: Mapping[str, int]) -> tuple[list[Subject], list[Problem]]:
        index, problems = self._slice_of(file, from_name, mapping, png)
        if index is None:
            return [], problems
        boxes, problems = self._boxes(file, entry.boxes, index)
        unknown = sorted({b.label for b in boxes if _norm(b.label) not in _KNOWN})
        if unknown:
            problems.append(Problem(f"unknown FastMRI+ label(s) {unknown} on slice {index}: not in the label -> set "
                                    "table of datamodules/releases/fastmri.py (GROUP_LABELS / UNMAPPED_LABELS)",
                                    file, self.annotations))
        placed: list[tuple[str | None, tuple[slice, slice]]] = []  # (set or None for an unmapped label, region)
        for box in boxes:
            region, box_problems = self._place(box, size, file, png)
            problems += box_problems
            if region is not None:
                placed.append((_LABEL_GROUP.get(_norm(box.label)), region))
        if problems:
            return [], problems
        if not boxes:
            self.excluded["no_box_on_slice"].append(file)
            return [], []
        self.unmapped_boxes.update(b.label for b in boxes if _norm(b.label) not in _LABEL_GROUP)
        groups = sorted({group for group, _ in placed if group is not None})
        if not groups:
            self.excluded["unmapped_labels_only"].append(file)
            return [], []
        base, problems = self._base_region(file, png, size)
        if problems:
            return [], problems
        return [self._group_subject(file, png, size, index, group, boxes, placed, base) for group in groups], []

    def _group_subject(self, file: str, png: Path, size: tuple[int, int], index: int, group: str, boxes: list[Box],
                       placed: list[tuple[str | None, tuple[slice, slice]]], base: np.ndarray | None) -> Subject:
        shape = (size[1], size[0])
        mask, others = np.zeros(shape, bool), np.zeros(shape, bool)
        for box_group, region in placed:
            (mask if box_group == group else others)[region] = True
        files = {**self.image_columns({"t1": png}), "mask": self.out / "masks" / f"{file}_{group}.png"}
        write_png_if_changed(files["mask"], mask.astype(np.uint8) * 255)
        if base is not None or others.any():
            roi = ((np.ones(shape, bool) if base is None else base) & ~others) | mask
            files["roi"] = self.out / "rois" / f"{file}_{group}.png"
            write_png_if_changed(files["roi"], roi.astype(np.uint8) * 255)
        labels = sorted({b.label for b in boxes if _LABEL_GROUP.get(_norm(b.label)) == group})
        count = sum(1 for box_group, _ in placed if box_group == group)
        return Subject(id=file, group=group, files=files,
                       extra={"slice": str(index), "labels": "; ".join(labels), "boxes": str(count)})
