"""Memory-mapped slice cache: volumes are preprocessed once, epochs read only the cache.

A cache folder holds the slices of one split, in raw binary files opened with ``np.memmap``:
``images.f32`` [N,C,H,W], ``masks.u8`` and ``rois.u8`` [N,1,H,W], and small ``labels.npy``, ``slices.npy``,
``subjects.json``, plus ``meta.json`` (shapes, settings, inputs) written last. The folder name contains a hash of
the inputs (path, size and modification time of every file) and of the preprocessing settings, so a changed file
or setting builds a new cache and never reuses a stale one. Building writes into a temporary sibling folder that is
renamed into place at the end: an interrupted build leaves nothing that looks complete, and two processes building
the same cache at once both end with the same valid folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from datamodules.base import SliceArrays
from datamodules.errors import DataError
from datamodules.preprocessing import PreprocessingSettings, VolumeRecord, VolumeSlices, preprocess_volume

CACHE_FORMAT_VERSION = 1  # part of every cache key: bump it when the preprocessing changes its output


def cache_key(records: Sequence[VolumeRecord], settings: PreprocessingSettings,
              lesion_free_margin: int | None = None) -> str:
    """Hash of everything that determines the cached slices."""
    files = []
    for record in records:
        for path in record.paths():
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "settings": settings.fingerprint(),
        "subjects": [r.subject for r in records],
        "roles": [[r.mask is not None, r.roi is not None] for r in records],
        "files": files,
    }
    labels = [r.labels_key() for r in records]
    if any(label is not None for label in labels):
        payload["labels"] = labels
    if lesion_free_margin is not None:
        payload["lesion_free_margin"] = lesion_free_margin
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class SliceCache:
    """The cache of one split: ``build()`` once, then ``open()`` as memory-mapped ``SliceArrays``.

    ``lesion_free_margin`` (training splits): drop every slice with a lesion pixel and the ``margin`` slices on
    either side of it, so healthy slices of pathological volumes can train (BraTS / LiTS reference sets) while
    the lesions, and the tissue next to them, are never seen. None keeps every slice.
    """

    def __init__(self, root: str | Path, name: str, records: Sequence[VolumeRecord], settings: PreprocessingSettings,
                 lesion_free_margin: int | None = None):
        if not records:
            raise DataError(f"split {name!r} lists no volumes; add rows to its CSV")
        missing = [str(p) for r in records for p in r.paths() if not p.is_file()]
        if missing:
            shown = "\n  ".join(missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(f"split {name!r}: {len(missing)} file(s) listed but not found:\n  {shown}{more}")
        if lesion_free_margin is not None and lesion_free_margin < 0:
            raise ValueError(f"lesion_free_margin must be >= 0 slices, got {lesion_free_margin}")
        self.name = name
        self.records = list(records)
        self.settings = settings
        self.lesion_free_margin = lesion_free_margin
        safe_name = name.replace("/", "_")
        self.path = Path(root) / f"{safe_name}-{cache_key(self.records, settings, lesion_free_margin)[:16]}"

    def is_built(self) -> bool:
        return (self.path / "meta.json").is_file()

    def build(self, progress: bool = True) -> Path:
        """Preprocess every volume of the split into the cache folder (no-op when it already exists)."""
        if self.is_built():
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}-", dir=self.path.parent))
        try:
            self._write(tmp, progress)
            try:
                os.replace(tmp, self.path)
            except OSError:
                if not self.is_built():  # another process finished first: keep its folder, drop ours
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.path

    def _write(self, folder: Path, progress: bool) -> None:
        labels, slices, subjects = [], [], []
        image_shape: tuple[int, ...] | None = None
        dropped = 0
        with open(folder / "images.f32", "wb") as fi, open(folder / "masks.u8", "wb") as fm, \
                open(folder / "rois.u8", "wb") as fr:
            for record in tqdm(self.records, desc=f"caching {self.name}", unit="vol", disable=not progress):
                vol = preprocess_volume(record, self.settings)
                if self.lesion_free_margin is not None:
                    vol, n_lesion = _lesion_free(vol, self.lesion_free_margin)
                    dropped += n_lesion
                if len(vol.slices) == 0:
                    continue
                image_shape = image_shape or vol.images.shape[1:]
                fi.write(np.ascontiguousarray(vol.images).tobytes())
                fm.write(np.ascontiguousarray(vol.masks).tobytes())
                fr.write(np.ascontiguousarray(vol.rois).tobytes())
                labels.append(vol.labels)
                slices.append(vol.slices)
                subjects.extend([record.subject] * len(vol.slices))
        if image_shape is None:
            lesions = (f"; {dropped} slice(s) were dropped for lesions (lesion_free_margin="
                       f"{self.lesion_free_margin})") if dropped else ""
            raise DataError(f"split {self.name!r}: no slice passed the selection (slice_range="
                            f"{self.settings.slice_range}, min_roi_fraction={self.settings.min_roi_fraction}"
                            f"{lesions}); loosen these settings or check the roi files")
        np.save(folder / "labels.npy", np.concatenate(labels))
        np.save(folder / "slices.npy", np.concatenate(slices))
        (folder / "subjects.json").write_text(json.dumps(subjects))
        meta = {
            "version": CACHE_FORMAT_VERSION,
            "split": self.name,
            "n_slices": len(subjects),
            "image_shape": list(image_shape),
            "settings": self.settings.fingerprint(),
            "lesion_free_margin": self.lesion_free_margin,
            "slices_dropped_for_lesions": dropped,
            "volumes": [{"subject": r.subject, "files": [str(p) for p in r.paths()]} for r in self.records],
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))

    def dropped_for_lesions(self) -> int:
        """How many slices the lesion-free rule removed (0 before the cache is built)."""
        if not self.is_built():
            return 0
        return int(json.loads((self.path / "meta.json").read_text()).get("slices_dropped_for_lesions", 0))

    def open(self) -> SliceArrays:
        """Memory-map the cache (building it first if needed)."""
        self.build()
        meta = json.loads((self.path / "meta.json").read_text())
        n, shape = meta["n_slices"], tuple(meta["image_shape"])
        mask_shape = (n, 1, *shape[1:])
        return SliceArrays(
            images=np.memmap(self.path / "images.f32", dtype=np.float32, mode="r", shape=(n, *shape)),
            masks=np.memmap(self.path / "masks.u8", dtype=np.uint8, mode="r", shape=mask_shape),
            rois=np.memmap(self.path / "rois.u8", dtype=np.uint8, mode="r", shape=mask_shape),
            labels=np.load(self.path / "labels.npy"),
            subjects=np.asarray(json.loads((self.path / "subjects.json").read_text())),
            slices=np.load(self.path / "slices.npy"),
            source=self.name,
        )


def _lesion_free(vol: VolumeSlices, margin: int) -> tuple[VolumeSlices, int]:
    """``vol`` without its lesion slices and the ``margin`` slices on either side (by slice index)."""
    lesion = vol.masks.reshape(len(vol.slices), -1).any(axis=1) if len(vol.slices) else np.zeros(0, bool)
    if not lesion.any():
        return vol, 0
    near = np.abs(vol.slices[:, None] - vol.slices[lesion][None, :]).min(axis=1) <= margin
    keep = ~near
    kept = VolumeSlices(vol.images[keep], vol.masks[keep], vol.rois[keep], vol.slices[keep], vol.labels[keep])
    return kept, int(near.sum())
