"""Leave-one-class-out protocol for classification data sets used as anomaly detection benchmarks.

One class of a labelled image data set is declared "anomalous" and never seen in training; a model is trained on
the images of the other classes and must tell the left-out class apart at test time. This is the sample-level
protocol of Zimmerer et al., "Unsupervised anomaly localization using variational auto-encoders" (MICCAI 2019),
used there for FashionMNIST, and shared here by the ``digits``, ``mnist`` and ``image_folder`` datasets.

Splits built by :func:`leave_one_class_out`:

===================  =======  ===========================================================================
split                label    content
===================  =======  ===========================================================================
``train``            0        training pool of the other classes, less ``val``
``val``              0        a stratified random ``val_fraction`` of the training pool
``test/healthy``     0        held-out test images of the other classes
``test/anomalous``   1        test images of the left-out class
===================  =======  ===========================================================================

There are no pixel annotations: masks are all zero and the roi is the whole image, so only sample-level metrics
are meaningful. Each image is its own subject (one slice, index 0) with an id that names its source and its index
there, so ids are stable across runs and seeds and splits are subject-disjoint by construction.

Images are scaled to [0, 1] by a known maximum value, resized to ``image_size`` x ``image_size`` with bilinear
interpolation (``align_corners=False``, antialiasing when downsampling) and clipped to [0, 1]. Every random choice
comes from a numpy ``Generator`` seeded by ``(seed, stream)``, so splits are deterministic for a seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.base import HEALTHY_TEST_SET, DatasetSplits, SliceArrays
from datamodules.errors import DataError

__all__ = [
    "ANOMALOUS",
    "HEALTHY",
    "STREAMS",
    "cap_per_class",
    "check_fraction",
    "check_held_out_class",
    "check_image_size",
    "check_optional_count",
    "check_seed",
    "leave_one_class_out",
    "make_split",
    "split_rng",
    "stratified_sample",
    "stratified_split",
    "to_unit_images",
]

HEALTHY = HEALTHY_TEST_SET  # the reference of the evaluator's sample.vs_healthy
ANOMALOUS = "anomalous"
# Independent random streams per purpose, so changing one setting does not reshuffle unrelated splits.
STREAMS = {"test": 0, "subsample": 1, "val": 2, "test_cap": 3}


# -------------------------------------------------------------------------------------------------------- arguments
def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float strictly between 0 and 1, else a ValueError naming the argument."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def check_image_size(value: int, minimum: int = 8) -> int:
    """``value`` as an int >= ``minimum``, else a ValueError."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"image_size must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_seed(value: int) -> int:
    """``value`` as a non-negative int, else a ValueError."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def check_optional_count(name: str, value: int | None, minimum: int = 1) -> int | None:
    """``None`` or an int >= ``minimum``, else a ValueError naming the argument."""
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be None or an integer >= {minimum}, got {value!r}")
    return int(value)


def check_held_out_class(held_out_class: int, classes: Iterable[int], source: str) -> int:
    """The held-out class as an int; DataError unless it is an int and one of ``classes`` (listed in the message)."""
    available = sorted({int(c) for c in classes})
    if not _is_int(held_out_class):
        raise DataError(f"{source}: held_out_class must be an integer class label, one of {available}; "
                        f"got {held_out_class!r} ({type(held_out_class).__name__})")
    if int(held_out_class) not in available:
        raise DataError(f"{source}: held_out_class {held_out_class} is not one of the classes present: {available}")
    return int(held_out_class)


# ----------------------------------------------------------------------------------------------------- random splits
def split_rng(seed: int, stream: str) -> np.random.Generator:
    """Generator for one purpose (a key of ``STREAMS``) of a dataset seed."""
    return np.random.default_rng([check_seed(seed), STREAMS[stream]])


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(check_seed(rng))


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator | int) -> np.ndarray:
    """Sorted indices of ``n`` items drawn without replacement, class proportions kept.

    Each class gets ``n * count / total`` items rounded down, and the items still missing go to the classes with the
    largest remainders (ties: smaller class label first), so the total is exactly ``n`` and every class is within one
    item of its proportional share. Deterministic for a seed or a freshly seeded generator.
    """
    labels = np.asarray(labels)
    rng = _as_rng(rng)
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"cannot draw {n} items from {total}")
    classes, counts = np.unique(labels, return_counts=True)
    take = n * counts // total
    remainders = n * counts % total
    missing = n - int(take.sum())
    take[np.argsort(-remainders, kind="stable")[:missing]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator | int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(rest, part)`` where ``part`` is a stratified random ``fraction`` of the items.

    ``part`` has ``round(fraction * N)`` items, but at least one and at most ``N - 1`` so neither side is empty
    (``N >= 2`` required). Both index arrays are sorted; deterministic for a seed or a freshly seeded generator.
    """
    fraction = check_fraction("fraction", fraction)
    labels = np.asarray(labels)
    total = len(labels)
    if total < 2:
        raise DataError(f"cannot split {total} image(s) into two non-empty parts")
    n_part = min(max(round(fraction * total), 1), total - 1)
    part = stratified_sample(labels, n_part, rng)
    rest = np.setdiff1d(np.arange(total), part, assume_unique=True)
    return rest, part


def cap_per_class(labels: np.ndarray, max_per_class: int | None, rng: np.random.Generator | int) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` random items of every class (None: all items)."""
    labels = np.asarray(labels)
    if max_per_class is None:
        return np.arange(len(labels))
    rng = _as_rng(rng)
    kept = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------------------------------------------------ arrays
def to_unit_images(images: np.ndarray, max_value: float, image_size: int, chunk_size: int = 4096) -> np.ndarray:
    """Images [N,H,W] or [N,C,H,W] (any numeric dtype) -> float32 [N,C,S,S] in [0, 1] (C = 1 for [N,H,W]):
    divided by ``max_value``, resized, clipped.

    Resizing is bilinear with ``align_corners=False`` and antialiasing when an axis shrinks, channel by channel;
    images already at ``image_size`` are only scaled. Works in chunks so memory stays at the size of the output.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise DataError(f"expected images as an [N,H,W] or [N,C,H,W] array, got shape {images.shape}")
    if not max_value > 0:
        raise ValueError(f"max_value must be > 0, got {max_value!r}")
    if images.ndim == 3:
        images = images[:, None]
    n, channels, height, width = images.shape
    size = (image_size, image_size)
    downsample = image_size < height or image_size < width
    out = np.empty((n, channels, *size), dtype=np.float32)
    for start in range(0, n, chunk_size):
        block = torch.from_numpy(np.asarray(images[start:start + chunk_size], dtype=np.float32))
        block = block / float(max_value)
        if (height, width) != size:
            block = F.interpolate(block, size=size, mode="bilinear", align_corners=False, antialias=downsample)
        out[start:start + chunk_size] = block.clamp_(0.0, 1.0).numpy()
    return out


def make_split(images: np.ndarray, label: int, subjects: np.ndarray, source: str) -> SliceArrays:
    """A split of whole images [N,C,H,W] (grey or RGB): one subject per image, slice 0, all-zero masks and all-one
    rois [N,1,H,W] (read-only views)."""
    n, _, height, width = images.shape
    return SliceArrays(
        images=images,
        masks=np.broadcast_to(np.zeros((1, 1, height, width), dtype=np.uint8), (n, 1, height, width)),
        rois=np.broadcast_to(np.ones((1, 1, height, width), dtype=np.uint8), (n, 1, height, width)),
        labels=np.full(n, label, dtype=np.int64),
        subjects=np.asarray(subjects, dtype=str),
        slices=np.zeros(n, dtype=np.int64),
        source=source,
    )


def leave_one_class_out(
    pool_images: np.ndarray,
    pool_labels: np.ndarray,
    pool_ids: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    test_ids: np.ndarray,
    *,
    held_out_class: int,
    max_value: float,
    image_size: int = 28,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_test_per_class: int | None = None,
    source: str = "dataset",
) -> DatasetSplits:
    """Build the leave-one-class-out splits (see the module docstring) from a training pool and a test source.

    Args:
        pool_images, pool_labels, pool_ids: images [N,H,W] or [N,C,H,W], class labels [N] and unique string ids
            [N] of the training source; images of the held-out class in it are dropped.
        test_images, test_labels, test_ids: the same for the test source; its images of the other classes form
            ``healthy``, those of the held-out class ``anomalous``.
        held_out_class: the anomalous class; must be an int among the classes of both sources.
        max_value: the intensity that maps to 1 (e.g. 255 for uint8 images).
        image_size: output side length.
        val_fraction: stratified fraction of the (subsampled) training pool that becomes ``val``.
        seed: dataset seed of every random choice (numpy Generators, one stream per purpose).
        max_train: stratified random subsample of the training pool (train + val); None keeps all.
        max_test_per_class: at most this many random test images per class; None keeps all.
        source: name of the data for error messages and split sources.
    """
    pool_labels, test_labels = np.asarray(pool_labels), np.asarray(test_labels)
    pool_ids, test_ids = np.asarray(pool_ids, dtype=str), np.asarray(test_ids, dtype=str)
    for what, images, labels, ids in (("training pool", pool_images, pool_labels, pool_ids),
                                      ("test source", test_images, test_labels, test_ids)):
        if not len(images) == len(labels) == len(ids):
            raise DataError(f"{source}: {what} has {len(images)} images, {len(labels)} labels and {len(ids)} ids; "
                            "the counts must agree")
    classes = np.union1d(np.unique(pool_labels), np.unique(test_labels))
    held_out_class = check_held_out_class(held_out_class, classes.tolist(), source)
    val_fraction = check_fraction("val_fraction", val_fraction)
    max_train = check_optional_count("max_train", max_train, minimum=2)
    max_test_per_class = check_optional_count("max_test_per_class", max_test_per_class)

    pool = np.flatnonzero(pool_labels != held_out_class)
    if len(pool) < 2:
        raise DataError(f"{source}: the training pool holds {len(pool)} image(s) outside the held-out class "
                        f"{held_out_class}; at least 2 are needed (one for train, one for val)")
    if max_train is not None and max_train < len(pool):
        pool = pool[stratified_sample(pool_labels[pool], max_train, split_rng(seed, "subsample"))]
    train_part, val_part = stratified_split(pool_labels[pool], val_fraction, split_rng(seed, "val"))
    train, val = pool[train_part], pool[val_part]

    test = cap_per_class(test_labels, max_test_per_class, split_rng(seed, "test_cap"))
    healthy = test[test_labels[test] != held_out_class]
    anomalous = test[test_labels[test] == held_out_class]
    for name, index in ((HEALTHY, healthy), (ANOMALOUS, anomalous)):
        if len(index) == 0:
            raise DataError(f"{source}: the test source has no images for the {name!r} test set "
                            f"(held_out_class {held_out_class}, classes {classes.tolist()})")

    def split(name: str, images: np.ndarray, ids: np.ndarray, index: np.ndarray, label: int) -> SliceArrays:
        unit = to_unit_images(np.asarray(images)[index], max_value, image_size)
        return make_split(unit, label, ids[index], f"{source}:{name}")

    return DatasetSplits(
        train=split("train", pool_images, pool_ids, train, 0),
        val=split("val", pool_images, pool_ids, val, 0),
        tests={HEALTHY: split(f"test/{HEALTHY}", test_images, test_ids, healthy, 0),
               ANOMALOUS: split(f"test/{ANOMALOUS}", test_images, test_ids, anomalous, 1)},
    )
