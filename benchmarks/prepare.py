"""Cost of `prepare` and of the first slice-cache build on BraTS-sized volumes, side by side in one run.

    python benchmarks/prepare.py [--subjects 6] [--shape 240 240 155] [--image-size 128] [--workers 1 2]

Writes a synthetic release in the BraTS 2021 layout (4 modalities + seg per subject, gzipped, real BraTS shape and
dtypes: float32 intensities, uint8 labels) to a temporary folder, then times:

* ``prepare --check headers``: scan + header reads (shapes, grids);
* ``prepare --check full`` per thread count: every voxel read (labels, NaN);
* the slice cache of the test split (one modality + seg per subject: load, label map, RAS, normalise, crop,
  resize, cut), i.e. the one-off cost before the first epoch.
Prints a Markdown table (seconds per subject and the ratio to the header check) for docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from datamodules.nifti import read_split_csv
from datamodules.preprocessing import PreprocessingSettings
from datamodules.releases.base import prepare
from datamodules.releases.brats import BraTSRelease
from datamodules.slice_cache import SliceCache


def write_release(root: Path, subjects: int, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    head = sum(g ** 2 for g in grid) <= 0.7
    for i in range(subjects):
        name = f"BraTS2021_{i:05d}"
        (root / name).mkdir(parents=True, exist_ok=True)
        seg = np.zeros(shape, np.uint8)
        tumour = sum((g - 0.2) ** 2 for g in grid) <= 0.05
        seg[tumour] = 2
        seg[sum((g - 0.2) ** 2 for g in grid) <= 0.02] = 4
        for kind in ("t1", "t1ce", "t2", "flair"):
            image = np.where(head, 300 + 50 * rng.standard_normal(shape, dtype=np.float32), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / name / f"{name}_{kind}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(root / name / f"{name}_seg.nii.gz"))


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "release"
        written = timed(lambda: write_release(root, args.subjects, tuple(args.shape)))
        release = BraTSRelease(root)
        rows = [("prepare --check headers", timed(lambda: prepare(release, tmp / "h", headers_only=True,
                                                                  pathology_split="test=1")))]
        for workers in args.workers:
            rows.append((f"prepare --check full, {workers} thread(s)",
                         timed(lambda w=workers: prepare(release, tmp / f"f{w}", pathology_split="test=1",
                                                         workers=w))))
        records = read_split_csv(tmp / "h" / "test_tumor.csv", "t2")
        settings = PreprocessingSettings(image_size=args.image_size, roi_from_foreground=True)
        cache = SliceCache(tmp / "cache", "test", records, settings)
        rows.append((f"slice cache, 1 modality, {args.image_size} px", timed(lambda: cache.build(progress=False))))
    base = rows[0][1]
    print(f"{args.subjects} subjects of {tuple(args.shape)} (4 modalities + seg, gzipped; writing them took "
          f"{written:.1f} s)\n")
    print("| step | seconds | s / subject | vs headers |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / args.subjects:.3f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()
