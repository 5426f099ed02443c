"""Per-subject counts of one test set, and ``subject_counts.npz``: what the subject bootstrap resamples (numpy only).

:class:`SubjectCounts` holds, for every test subject (sorted ids), its roi pixels per score bin of a coarse bin
layout (``pixels`` ``[S, 2, n]``, index 1 = lesion pixels, only the ``n`` bins occupied in some subject, ascending)
and its confusion counts at the healthy-calibrated thresholds (``calibrated`` ``[S, T, 4]``: tp, fp, fn, tn after
the post-processing profile). Summed over subjects they give the pooled numbers of ``metrics.json``: the calibrated
counts exactly, the pixel curves at the coarse resolution; ``fine`` keeps the run's fine-binned pixel AUROC / AUPRC
(``metrics.json``'s values), on which the bootstrap centres its replicates.

A run folder stores them for every score variant and test set in ``subject_counts.npz``
(:func:`write_subject_counts`, written by :func:`benchmark.job.run_job` before ``metrics.json``;
:func:`read_subject_counts`). Arrays, all without pickling (``np.savez_compressed``):

* ``format``: ``normbench.subject_counts/1``;
* ``manifest``: JSON text: ``key`` (the job's key, as in ``metrics.json``), ``entries``: a list of
  ``{"variant": name or null, "test_set": name, "prefix": "e<i>", "layout": {...}, "fine": {...}}`` (``layout``:
  the bin layout, ``sub_bins_per_octave``, ``min_exponent``, ``max_exponent``, ``n_bins``; ``fine``:
  ``{"pixel/auroc": value, "pixel/auprc": value}``, null when undefined);
* per entry ``<prefix>_subjects`` ``[S]`` str, ``<prefix>_bins`` ``[n]`` int64 bin indices,
  ``<prefix>_pixels`` ``[S, 2, n]`` int64, ``<prefix>_thresholds`` ``[T]`` str,
  ``<prefix>_calibrated`` ``[S, T, 4]`` int64.

A run folder without the file (runs from before it existed) or with a file of another job reads as ``None``.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.io import atomic_write_bytes

SUBJECT_COUNTS_NAME = "subject_counts.npz"
SUBJECT_COUNTS_FORMAT = "normbench.subject_counts/1"
EntryKey = tuple[str | None, str]  # (score variant or None, test set)


@dataclass(frozen=True, eq=False)
class SubjectCounts:
    """Per-subject pixel counts per occupied coarse bin and confusion counts at the calibrated thresholds."""

    subjects: tuple[str, ...]
    bins: np.ndarray  # [n] int64, ascending indices into the bin layout
    pixels: np.ndarray  # [S, 2, n] int64 (index 1 = lesion)
    thresholds: tuple[str, ...]
    calibrated: np.ndarray  # [S, T, 4] int64 (tp, fp, fn, tn)
    layout: dict[str, int] = field(default_factory=dict)
    fine: dict[str, float] = field(default_factory=dict)  # fine-binned pooled pixel metrics (NaN: undefined)

    def __post_init__(self) -> None:
        s, t = len(self.subjects), len(self.thresholds)
        if self.pixels.shape != (s, 2, len(self.bins)) or self.calibrated.shape != (s, t, 4):
            raise ValueError(f"SubjectCounts: pixels {self.pixels.shape} / calibrated {self.calibrated.shape} do not "
                             f"fit {s} subjects, {len(self.bins)} bins and {t} thresholds")

    @classmethod
    def from_histogram(cls, subjects: Sequence[str], histogram: np.ndarray, thresholds: Sequence[str],
                       calibrated: np.ndarray | None, layout: Mapping[str, int],
                       fine: Mapping[str, float] | None = None) -> SubjectCounts:
        """From full per-subject histograms ``[S, 2, n_bins]``, keeping the bins occupied in any subject."""
        histogram = np.asarray(histogram, dtype=np.int64)
        bins = np.flatnonzero(histogram.sum(axis=(0, 1)) > 0)
        if calibrated is None:
            calibrated = np.zeros((len(subjects), len(thresholds), 4), dtype=np.int64)
        return cls(tuple(subjects), bins.astype(np.int64), np.ascontiguousarray(histogram[:, :, bins]),
                   tuple(thresholds), np.asarray(calibrated, dtype=np.int64), dict(layout), dict(fine or {}))

    def to_json(self) -> dict[str, Any]:
        """Plain lists (for tests and debugging)."""
        return {"subjects": list(self.subjects), "bins": self.bins.tolist(), "pixels": self.pixels.tolist(),
                "thresholds": list(self.thresholds), "calibrated": self.calibrated.tolist(), "layout": self.layout,
                "fine": self.fine}


def write_subject_counts(path: str | Path, counts: Mapping[EntryKey, SubjectCounts], key: str | None) -> None:
    """Write ``counts`` (per (variant, test set)) to ``path`` atomically (compressed npz, no pickles)."""
    arrays: dict[str, np.ndarray] = {"format": np.array(SUBJECT_COUNTS_FORMAT)}
    entries = []
    for i, ((variant, test_set), entry) in enumerate(counts.items()):
        prefix = f"e{i}"
        fine = {name: value if math.isfinite(value) else None for name, value in entry.fine.items()}
        entries.append({"variant": variant, "test_set": test_set, "prefix": prefix, "layout": entry.layout,
                        "fine": fine})
        arrays.update({f"{prefix}_subjects": np.array(entry.subjects, dtype=str), f"{prefix}_bins": entry.bins,
                       f"{prefix}_pixels": entry.pixels, f"{prefix}_thresholds": np.array(entry.thresholds, dtype=str),
                       f"{prefix}_calibrated": entry.calibrated})
    arrays["manifest"] = np.array(json.dumps({"key": key, "entries": entries}))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _entry(data: Any, item: dict[str, Any]) -> SubjectCounts:
    prefix = str(item["prefix"])
    subjects, thresholds = data[f"{prefix}_subjects"], data[f"{prefix}_thresholds"]
    fine = {str(name): math.nan if value is None else float(value) for name, value in (item.get("fine") or {}).items()}
    return SubjectCounts(tuple(str(s) for s in subjects.reshape(-1)), data[f"{prefix}_bins"].astype(np.int64),
                         data[f"{prefix}_pixels"].astype(np.int64), tuple(str(t) for t in thresholds.reshape(-1)),
                         data[f"{prefix}_calibrated"].astype(np.int64), dict(item.get("layout") or {}), fine)


def read_subject_counts(path: str | Path, key: str | None = None) -> dict[EntryKey, SubjectCounts] | None:
    """The counts of a ``subject_counts.npz`` (a file or the run folder holding it), or ``None`` when there is
    none, it is unreadable, or ``key`` is given and differs from the job key it was written with (a stale file)."""
    path = Path(path)
    if path.is_dir():
        path = path / SUBJECT_COUNTS_NAME
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != SUBJECT_COUNTS_FORMAT:
                return None
            manifest = json.loads(str(data["manifest"]))
            if key is not None and manifest.get("key") != key:
                return None
            return {(item["variant"], str(item["test_set"])): _entry(data, item) for item in manifest["entries"]}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None
