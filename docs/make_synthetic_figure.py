"""Render docs/images/synthetic_brain.png: axial slices of synthetic healthy, tumour, MS and stroke subjects.

Usage: ``python docs/make_synthetic_figure.py [--rows 3] [--seed 0] [--out docs/images/synthetic_brain.png]``.
A small dataset is generated into a temporary folder; lesion masks are outlined in colour.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from skimage.segmentation import find_boundaries

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.synthetic_brain import (  # noqa: E402
    LESION_KINDS,
    SyntheticBrainSpec,
    generate_synthetic_brain,
    split_csv_paths,
)

COLUMNS = ("healthy", *LESION_KINDS)
OUTLINE = (1.0, 0.15, 0.1)
ZOOM = 4
HEADROOM = 1.2


def _read_split(csv_path: Path) -> list[dict[str, Path]]:
    """Rows of a split CSV with paths resolved against the CSV's folder."""
    with open(csv_path, newline="") as handle:
        return [
            {"subject": row["subject"], **{k: (csv_path.parent / row[k]).resolve() for k in ("image", "mask", "roi")}}
            for row in csv.DictReader(handle)
        ]


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _axial_slice(mask: np.ndarray, brain: np.ndarray) -> int:
    """Slice with the largest lesion area, or a mid-ventricular slice when the mask is empty."""
    if mask.any():
        return int(mask.sum(axis=(0, 1)).argmax())
    return round(0.55 * np.flatnonzero(brain.any(axis=(0, 1))).mean() + 0.45 * brain.shape[2] / 2)


def _upsample(plane: np.ndarray) -> np.ndarray:
    """Nearest-neighbour magnification so that outlines are thinner than a voxel."""
    return np.repeat(np.repeat(plane, ZOOM, axis=0), ZOOM, axis=1)


def _panel(ax: plt.Axes, row: dict[str, Path], title: str) -> None:
    image, mask, brain = _load(row["image"]), _load(row["mask"]).astype(bool), _load(row["roi"]).astype(bool)
    z = _axial_slice(mask, brain)
    vmax = HEADROOM * float(np.percentile(image[brain], 99.5))  # headroom keeps hyperintense lesions visible
    rgb = np.repeat(_upsample(np.clip(image[:, :, z] / vmax, 0, 1))[..., None], 3, axis=-1)
    rgb[find_boundaries(_upsample(mask[:, :, z]), mode="thick")] = OUTLINE
    ax.imshow(np.transpose(rgb, (1, 0, 2)), origin="lower", interpolation="nearest")
    volume_cm3 = mask.sum() * np.prod(nib.load(row["mask"]).header.get_zooms()[:3]) / 1000
    ax.set_title(f"{title}\n{row['subject']}  z={z}  lesion {volume_cm3:.1f} cm³", fontsize=8)
    ax.axis("off")


def make_figure(out: Path, rows: int, seed: int) -> Path:
    """Generate a small dataset and save the figure to ``out``."""
    spec = SyntheticBrainSpec(
        seed=seed, n_train=0, n_val=0, n_test_healthy=rows, n_test_per_lesion=rows, n_unlabelled=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        csvs = split_csv_paths(generate_synthetic_brain(tmp, spec))
        fig, axes = plt.subplots(rows, len(COLUMNS), figsize=(2.6 * len(COLUMNS), 3.0 * rows), squeeze=False)
        for col, kind in enumerate(COLUMNS):
            for r, row in enumerate(_read_split(csvs[f"test_{kind}"])):
                _panel(axes[r, col], row, kind)
        fig.suptitle("Synthetic brain MRI (MNI152 2009c + random deformation, lesions outlined)", fontsize=10)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150)
        plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3, help="subjects per column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "synthetic_brain.png")
    args = parser.parse_args()
    print(make_figure(args.out, args.rows, args.seed))


if __name__ == "__main__":
    main()
