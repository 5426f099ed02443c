"""Qualitative slices: which slices of a test set to show, their saved arrays, and how they are drawn.

Every method shows the same slices of a test set: the ``k`` slices with the most lesion pixels, each subject's best
slice first (for a set without lesions, such as ``healthy``, the ``k`` with the largest roi area), chosen from the
dataset alone (:func:`select_slices`). At test time :class:`benchmark.qualitative_callback.QualitativeCallback`
keeps those slices' outputs and writes ``figures/qualitative_<test set>.npz`` (:func:`save_qualitative`) and the
run's PNGs; the report reads the arrays back (:func:`load_qualitative`) and draws every entry on the same slices.

No torch here: the report (which must not import torch) uses the same reader and drawing helpers.

Arrays of ``qualitative_<test set>.npz`` (k slices, H x W pixels):

* ``indices`` [k] positions in the test split, ``subjects`` [k], ``slices`` [k], ``criterion`` (``lesion pixels``
  or ``roi area``);
* ``image`` [k,H,W] float32 (the input, mean over channels), ``mask`` and ``roi`` [k,H,W] uint8;
* ``reconstruction`` [k,H,W] float32 (mean over channels), only for methods that restore images;
* ``anomaly_map`` [k,H,W] float32, or ``anomaly_map[<variant>]`` per score variant.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from benchmark.io import atomic_write_bytes

N_SLICES = 4  # slices shown per test set
LESION_CRITERION, ROI_CRITERION = "lesion pixels", "roi area"
MAP_PERCENTILE = 99.0  # each map is scaled to its own 99th percentile over the shown slices
MAP_CMAP = "inferno"
OUTLINE_COLOR = "#00e5ff"  # lesion outline: cyan, visible on grey inputs and on inferno maps


def map_key(variant: str | None) -> str:
    """Key of an anomaly map in the arrays: ``anomaly_map`` or ``anomaly_map[<variant>]``."""
    return "anomaly_map" if variant is None else f"anomaly_map[{variant}]"


def pixel_counts(masks: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Non-zero pixels per slice of ``[N,...]`` masks, read in chunks (memory-mapped splits stay on disk)."""
    counts = [np.count_nonzero(np.asarray(masks[i:i + chunk]).reshape(min(chunk, len(masks) - i), -1), axis=1)
              for i in range(0, len(masks), chunk)]
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64)


def select_slices(masks: np.ndarray, rois: np.ndarray, k: int = N_SLICES,
                  subjects: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """The indices of the ``k`` slices with the most lesion pixels, most first, ties by index; the largest roi
    areas when no slice has a lesion pixel. With ``subjects``, each subject's best slice comes first (so the grid
    shows several subjects rather than neighbouring slices of one), then the remaining slices by count.
    Returns ``(indices, criterion)``."""
    counts, criterion = pixel_counts(masks), LESION_CRITERION
    if not counts.any():
        counts, criterion = pixel_counts(rois), ROI_CRITERION
    order = np.argsort(-counts, kind="stable")
    if subjects is not None:
        first = np.zeros(len(order), dtype=bool)
        _, best = np.unique(np.asarray(subjects)[order], return_index=True)  # first (best) slice of each subject
        first[best] = True
        order = np.concatenate([order[first], order[~first]])  # both parts keep the count order
    return order[:max(k, 0)], criterion


def _grey(images: np.ndarray) -> np.ndarray:
    """``[k,C,H,W]`` or ``[k,H,W]`` -> ``[k,H,W]`` float32 (mean over channels)."""
    images = np.asarray(images, dtype=np.float32)
    return images.mean(axis=1) if images.ndim == 4 else images


@dataclass
class QualitativeSlices:
    """The shown slices of one test set, and what one run produced on them (``maps`` per score variant)."""

    test_set: str
    indices: np.ndarray
    subjects: np.ndarray
    slices: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    rois: np.ndarray
    criterion: str
    reconstruction: np.ndarray | None = None
    maps: dict[str | None, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_split(cls, test_set: str, images: np.ndarray, masks: np.ndarray, rois: np.ndarray,
                   subjects: np.ndarray, slices: np.ndarray, k: int = N_SLICES) -> QualitativeSlices:
        """The selected slices of a test split (arrays ``[N,C,H,W]`` / ``[N,1,H,W]`` / ``[N]``), without outputs."""
        indices, criterion = select_slices(masks, rois, k, subjects)
        order = np.asarray(indices, dtype=np.int64)
        return cls(test_set, order, np.asarray(subjects)[order].astype(str), np.asarray(slices)[order].astype(np.int64),
                   _grey(np.asarray(images)[order]), _grey(np.asarray(masks)[order]).round().astype(np.uint8),
                   _grey(np.asarray(rois)[order]).round().astype(np.uint8), criterion)

    @property
    def keys(self) -> list[tuple[str, int]]:
        """``(subject, slice)`` of each shown slice, how a test batch names its slices."""
        return [(str(s), int(n)) for s, n in zip(self.subjects, self.slices, strict=True)]

    def keep(self, positions: np.ndarray) -> QualitativeSlices:
        """Only the slices at ``positions`` (e.g. the ones a run actually saw)."""
        p = np.asarray(positions, dtype=np.int64)
        return QualitativeSlices(
            self.test_set, self.indices[p], self.subjects[p], self.slices[p], self.images[p], self.masks[p],
            self.rois[p], self.criterion, None if self.reconstruction is None else self.reconstruction[p],
            {variant: values[p] for variant, values in self.maps.items()})


def save_qualitative(path: Path, shown: QualitativeSlices) -> None:
    """Write the arrays of ``shown`` (module docstring) as a compressed npz, atomically."""
    arrays: dict[str, np.ndarray] = {
        "indices": shown.indices, "subjects": shown.subjects.astype(str), "slices": shown.slices,
        "criterion": np.asarray(shown.criterion), "image": shown.images.astype(np.float32),
        "mask": shown.masks.astype(np.uint8), "roi": shown.rois.astype(np.uint8)}
    if shown.reconstruction is not None:
        arrays["reconstruction"] = shown.reconstruction.astype(np.float32)
    arrays.update({map_key(variant): values.astype(np.float32) for variant, values in shown.maps.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_qualitative(path: Path, test_set: str) -> QualitativeSlices | None:
    """The arrays of a run's ``qualitative_<test set>.npz`` (``None`` when missing or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        maps: dict[str | None, np.ndarray] = {}
        for key, values in arrays.items():
            if key == "anomaly_map":
                maps[None] = values
            elif key.startswith("anomaly_map[") and key.endswith("]"):
                maps[key[len("anomaly_map["):-1]] = values
        return QualitativeSlices(test_set, arrays["indices"], arrays["subjects"].astype(str), arrays["slices"],
                                 arrays["image"], arrays["mask"], arrays["roi"], str(arrays["criterion"]),
                                 arrays.get("reconstruction"), maps)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, torn or foreign
        return None


# ---- drawing --------------------------------------------------------------------------------------------------------
def map_limits(maps: np.ndarray, rois: np.ndarray | None = None) -> tuple[float, float]:
    """Colour range of one entry's maps over its shown slices: ``[min(0, lowest), 99th percentile]`` of the finite
    values inside the roi (all pixels without a roi pixel)."""
    values = np.asarray(maps, dtype=np.float64)
    if rois is not None and np.asarray(rois).any():
        values = values[np.asarray(rois) > 0]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low = min(0.0, float(values.min()))
    high = float(np.percentile(values, MAP_PERCENTILE))
    return (low, high) if high > low else (low, low + 1.0)


def slice_title(shown: QualitativeSlices, i: int, width: int = 20) -> str:
    """``subject`` (shortened to ``width`` characters) over ``slice n, m lesion px`` (or roi px)."""
    count = int(np.count_nonzero(shown.masks[i] if shown.criterion == LESION_CRITERION else shown.rois[i]))
    unit = "lesion px" if shown.criterion == LESION_CRITERION else "roi px"
    subject = str(shown.subjects[i])
    if len(subject) > width:
        subject = subject[:width // 2 - 1] + "…" + subject[-(width - width // 2):]
    return f"{subject}\nslice {int(shown.slices[i])}, {count} {unit}"


def draw_image(ax: plt.Axes, image: np.ndarray, mask: np.ndarray | None = None) -> None:
    """A grey image in [0, 1], with the lesion outline when ``mask`` has lesion pixels."""
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    _outline(ax, mask)
    ax.set_axis_off()


def draw_map(ax: plt.Axes, values: np.ndarray, limits: tuple[float, float], roi: np.ndarray | None = None,
             mask: np.ndarray | None = None) -> None:
    """An anomaly map in ``limits`` (black outside the roi), with a thin lesion outline."""
    shown = np.asarray(values, dtype=np.float64)
    if roi is not None and np.asarray(roi).any():
        shown = np.where(np.asarray(roi) > 0, shown, np.nan)
    cmap = matplotlib.colormaps[MAP_CMAP].with_extremes(bad="black")
    ax.imshow(shown, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
    _outline(ax, mask, width=0.6)
    ax.set_axis_off()


def _outline(ax: plt.Axes, mask: np.ndarray | None, width: float = 0.9) -> None:
    if mask is not None and np.asarray(mask).any() and min(np.asarray(mask).shape) > 1:
        ax.contour(np.asarray(mask, dtype=np.float32), levels=[0.5], colors=OUTLINE_COLOR, linewidths=width)


def row_label(ax: plt.Axes, text: str, fontsize: float = 8.0) -> None:
    """A label left of a row's first panel."""
    ax.text(-0.06, 0.5, text, transform=ax.transAxes, ha="right", va="center", fontsize=fontsize)


def grid(rows: int, cols: int, panel: float, left: float, top: float) -> tuple[plt.Figure, np.ndarray]:
    """Square panels of ``panel`` inches with small gaps, a left margin for row labels and a top margin for the
    title and the first row's slice titles (inches)."""
    gap, bottom, right = 0.06, 0.1, 0.1
    width = left + right + cols * panel + (cols - 1) * gap
    height = top + bottom + rows * panel + (rows - 1) * gap
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap / panel, hspace=gap / panel)
    return fig, axes


def title_y(fig: plt.Figure, inches: float = 0.08) -> float:
    """Figure coordinate ``inches`` below the top edge (where a suptitle starts)."""
    return 1 - inches / fig.get_figheight()


def plot_run_qualitative(shown: QualitativeSlices, variant: str | None, title: str,
                         path: Path | None = None) -> plt.Figure:
    """One run's grid for one score variant: columns = the shown slices; rows = input with the lesion outline,
    reconstruction (when the method has one), anomaly map (scaled to its 99th percentile over the slices).
    Saved to ``path`` (and closed) when given, else returned open."""
    rows = ["input"] + (["reconstruction"] if shown.reconstruction is not None else []) + ["anomaly map"]
    k = len(shown.indices)
    fig, axes = grid(len(rows), max(k, 1), 1.6, 1.0, 0.95)
    maps = shown.maps[variant]
    limits = map_limits(maps, shown.rois)
    for i in range(k):
        axes[0][i].set_title(slice_title(shown, i), fontsize=7)
        draw_image(axes[0][i], shown.images[i], shown.masks[i])
        if shown.reconstruction is not None:
            draw_image(axes[1][i], np.clip(shown.reconstruction[i], 0.0, 1.0))
        draw_map(axes[-1][i], maps[i], limits, shown.rois[i], shown.masks[i])
    for j, name in enumerate(rows):
        row_label(axes[j][0], name)
    for ax in axes.ravel()[k:]:
        ax.set_axis_off()
    fig.suptitle(f"{title}\n{k} slices with the most {shown.criterion}; map scaled to [{limits[0]:.3g}, "
                 f"{limits[1]:.3g}] (99th percentile)", fontsize=8, y=title_y(fig), va="top")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def same_slices(a: QualitativeSlices, b: QualitativeSlices) -> bool:
    """Whether two runs' arrays show the same slices (indices, subjects and masks)."""
    return (np.array_equal(a.indices, b.indices) and list(a.subjects) == list(b.subjects)
            and a.masks.shape == b.masks.shape and np.array_equal(a.masks, b.masks))
