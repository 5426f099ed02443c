"""Miniature dataset releases for the adapter tests: tiny volumes and PNGs in the official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.nifti import read_split_csv
from datamodules.preprocessing import PreprocessingSettings
from datamodules.slice_cache import SliceCache
from tests.conftest import ellipsoid, write_nifti

__all__ = ["SHAPE", "blob", "brain", "ellipsoid_fraction", "native_grid_cache", "snapshot", "write_nifti",
           "write_png"]

SHAPE = (24, 28, 20)  # tiny, deliberately not cubic: catches swapped axes


def write_png(path: Path, data: np.ndarray) -> Path:
    """Write a 2D uint8 array (grayscale) or [H, W, 3] array (RGB) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(data, dtype=np.uint8)).save(path)
    return path


def ellipsoid_fraction(shape: tuple[int, ...] = SHAPE, fraction: float = 0.8) -> np.ndarray:
    """Boolean centred ellipsoid whose radii are ``fraction`` of each half axis (a "brain")."""
    return ellipsoid(shape, tuple(fraction * n / 2 for n in shape)).astype(bool)


def brain(rng: np.random.Generator, shape: tuple[int, ...] = SHAPE, skull: bool = False) -> np.ndarray:
    """A float32 head-like volume: a textured brain (0 outside), optionally with a bright skull shell."""
    inside = ellipsoid_fraction(shape, 0.7)
    volume = np.where(inside, 0.6 + 0.1 * rng.standard_normal(shape), 0.0)
    if skull:
        volume = np.where(ellipsoid_fraction(shape, 0.85) & ~inside, 1.0, volume)
    return volume.astype(np.float32)


def blob(shape: tuple[int, ...], centre: tuple[int, ...], radius: float) -> np.ndarray:
    """Boolean ball (any dimension)."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius ** 2


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Content and modification time of every file below ``folder``: equal snapshots = nothing was rewritten."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def native_grid_cache(csv: Path, modality: str, cache_dir: Path) -> SliceCache:
    """The slice cache of one prepared CSV on the volumes' own grid: every slice, no crop, padded to a square of
    the larger in-plane side and not resampled, so mask pixel counts equal the source voxels exactly."""
    settings = PreprocessingSettings(image_size=max(SHAPE[:2]), crop_to_roi=False, min_roi_fraction=0.0,
                                     intensity_percentiles=(0, 100), min_lesion_pixels=1)
    cache = SliceCache(cache_dir, "native", read_split_csv(csv, modality), settings)
    cache.build(progress=False)
    return cache
