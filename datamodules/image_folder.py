"""A folder of class sub-folders (PNG / JPEG) as a leave-one-class-out anomaly detection benchmark.

For natural-image sets exported to folders (CIFAR-10, CelebA attributes, a classification set of your own) with the
protocol of :mod:`datamodules.leave_one_class_out`: train on every class but ``held_out_class``; the test sets are
``healthy`` (test images of the other classes, label 0) and ``anomalous`` (test images of the held-out class,
label 1). Sample-level only: masks are empty and the roi is the whole image.

Layouts (class names are the folder names; images may sit in nested folders below their class folder)::

    root/<class>/*.png|jpg|jpeg                       one folder per class: each class is split by
                                                      test_fraction (random, fixed by the seed)
    root/train/<class>/...  and  root/test/<class>/...  an official split: train and test must hold the same classes

Files whose suffix is not .png / .jpg / .jpeg, and hidden files and folders (``.DS_Store``, ``._x.png``), are
ignored. Subject ids are the image's path relative to ``root`` with ``/`` separators: ``<class>/<relative path>``
(``train/<class>/...`` in the split layout, where train and test often reuse file names), so they are stable.

Images: 8-bit and 16-bit grey, RGB and palette images are read with Pillow (alpha is dropped), scaled to [0, 1] by
255 (65535 for 16-bit), resized to ``image_size`` x ``image_size`` (bilinear, antialiased when shrinking; the
aspect ratio is not kept) and kept as 16-bit values until the splits are built (exact for 8-bit sources).
``channels`` None picks 1 when every image read is grey (RGB files with three equal channels count as grey), else
3; grey images become RGB by repeating the channel, colour images grey by the ITU-R 601-2 luma weights.

Splits: ``val_fraction`` of the training pool (stratified) is ``val``; ``max_train`` / ``max_test_per_class``
subsample before any image is read (the same draws :func:`leave_one_class_out` would make), so a large folder
can be tried on a CPU. Unreadable or corrupt files are all listed in one error.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from datamodules.base import AnomalyDataModule, DatasetSplits
from datamodules.errors import DataError
from datamodules.leave_one_class_out import (
    STREAMS,
    cap_per_class,
    check_fraction,
    check_image_size,
    check_optional_count,
    check_seed,
    leave_one_class_out,
    split_rng,
    stratified_sample,
)

__all__ = ["IMAGE_SUFFIXES", "ImageFolderDataModule", "ImageRecord", "find_images", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STORE_MAX = 65535  # images are kept as uint16 between reading and the splits
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class ImageRecord:
    """One image file: its path, class and subject id."""

    path: Path
    label: str
    subject: str


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, folder))


def _scan(folder: Path, root: Path) -> dict[str, list[ImageRecord]]:
    """Class name -> its image records, for one folder of class folders; DataError for loose or missing images."""
    loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")]
    if loose:
        raise DataError(f"image folder {folder}: {len(loose)} image(s) lie outside any class folder "
                        f"(e.g. {sorted(loose)[:5]}); put every image below root/<class>/")
    classes = {}
    for class_folder in _class_folders(folder):
        classes[class_folder.name] = [ImageRecord(p, class_folder.name, p.relative_to(root).as_posix())
                                      for p in _images_below(class_folder)]
    if len(classes) < 2:
        raise DataError(f"image folder {folder}: found {len(classes)} class folder(s) {sorted(classes)}; the "
                        "leave-one-class-out protocol needs at least 2 (root/<class>/*.png, one folder per class)")
    empty = sorted(name for name, records in classes.items() if not records)
    if empty:
        raise DataError(f"image folder {folder}: class folder(s) {empty} hold no .png / .jpg / .jpeg image")
    return classes


def find_images(root: str | Path) -> tuple[dict[str, list[ImageRecord]], dict[str, list[ImageRecord]] | None]:
    """Class name -> image records: (classes, None) for root/<class>/, (train, test) for root/{train,test}/<class>/."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} (absolute: {root.resolve()}) does not exist; expected root/<class>/"
                        "*.png|jpg|jpeg or root/train/<class>/... + root/test/<class>/... (set the dataset's root)")
    train, test = root / "train", root / "test"
    if train.is_dir() != test.is_dir():
        present, absent = (train, test) if train.is_dir() else (test, train)
        raise DataError(f"image folder {root}: found {present.name}/ but no {absent.name}/; the split layout needs "
                        "both root/train/<class>/ and root/test/<class>/")
    if not train.is_dir():
        return _scan(root, root), None
    train_classes, test_classes = _scan(train, root), _scan(test, root)
    if set(train_classes) != set(test_classes):
        raise DataError(f"image folder {root}: train and test hold different classes (only in train: "
                        f"{sorted(set(train_classes) - set(test_classes))}, only in test: "
                        f"{sorted(set(test_classes) - set(train_classes))})")
    return train_classes, test_classes


def split_classes(classes: dict[str, list[ImageRecord]], test_fraction: float, seed: int
                  ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, test) records: each class split on its own by ``test_fraction``, seeded by (seed, class name)."""
    small = sorted(name for name, records in classes.items() if len(records) < 2)
    if small:
        raise DataError(f"class folder(s) {small} hold fewer than 2 images; without root/train and root/test "
                        "folders every class is split into train and test, so each needs at least 2")
    train, test = [], []
    for name, records in sorted(classes.items()):
        n_test = min(max(round(test_fraction * len(records)), 1), len(records) - 1)
        rng = np.random.default_rng([seed, STREAMS["test"], zlib.crc32(name.encode())])
        chosen = set(rng.permutation(len(records))[:n_test].tolist())
        train += [r for i, r in enumerate(records) if i not in chosen]
        test += [r for i, r in enumerate(records) if i in chosen]
    return train, test


# ----------------------------------------------------------------------------------------------------- reading
def _decode(path: Path) -> tuple[np.ndarray, bool]:
    """A [C,H,W] float32 image in [0, 1] (C = 1 grey, 3 colour) and whether it is grey."""
    with Image.open(path) as picture:
        picture.load()
        if picture.mode == "F":
            raise ValueError("floating-point images are not supported")
        if picture.mode in _SIXTEEN_BIT:
            array = np.asarray(picture, dtype=np.float64)
            if array.min() < 0 or array.max() > STORE_MAX:
                raise ValueError(f"{picture.mode} image with values outside 0..65535")
            return (array / STORE_MAX).astype(np.float32)[None], True
        if picture.mode in ("1", "L", "LA", "La"):
            return (np.asarray(picture.convert("L"), dtype=np.float32) / 255.0)[None], True
        rgb = np.asarray(picture.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    if (rgb[1:] == rgb[:1]).all():
        return rgb[:1], True
    return rgb, False


def _read(path: Path, image_size: int) -> tuple[np.ndarray, bool] | str:
    """The image resized to ``image_size`` as uint16 [C,S,S] and its greyness, or why it cannot be read."""
    try:
        image, grey = _decode(path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    block = torch.from_numpy(image)[None]
    if image.shape[1:] != (image_size, image_size):
        shrink = image_size < image.shape[1] or image_size < image.shape[2]
        block = F.interpolate(block, size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=shrink)
    stored = torch.round(block[0].clamp(0.0, 1.0) * STORE_MAX).numpy().astype(np.uint16)
    return stored, grey


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=0)
    luma = np.tensordot(LUMA, image.astype(np.float32), axes=1)
    return np.round(luma).clip(0, STORE_MAX).astype(np.uint16)[None]


def load_images(records: list[ImageRecord], image_size: int, channels: int | None, workers: int | None = None
                ) -> tuple[np.ndarray, int]:
    """uint16 images [N,C,S,S] (scaled by 65535) of ``records`` and the channel count; DataError listing every
    unreadable file."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda r: _read(r.path, image_size), records))
    bad = [f"  {r.path}: {result}" for r, result in zip(records, results, strict=True) if isinstance(result, str)]
    if bad:
        raise DataError(f"{len(bad)} image file(s) cannot be read (corrupt, truncated or not an image); fix or "
                        "remove them:\n" + "\n".join(bad))
    if channels is None:
        channels = 1 if all(grey for _, grey in results) else 3
    images = np.empty((len(records), channels, image_size, image_size), dtype=np.uint16)
    for i, (image, _) in enumerate(results):
        images[i] = _to_channels(image, channels)
    return images, channels


# -------------------------------------------------------------------------------------------------- datamodule
class ImageFolderDataModule(AnomalyDataModule):
    """Leave-one-class-out on a folder of class folders; test sets ``healthy`` and ``anomalous``.

    Args:
        root: ``root/<class>/*.png|jpg|jpeg`` or ``root/train/<class>/...`` + ``root/test/<class>/...``.
        held_out_class: the class folder name that is anomalous and absent from training.
        image_size: side length of the resized (square) images, >= 8.
        channels: 1 or 3; None picks 1 when every image read is grey, else 3.
        val_fraction: stratified fraction of the training pool used for validation.
        seed: dataset seed of the splits and subsamples (independent of the training seed).
        max_train: stratified random subsample of the training pool (train + val); None = all.
        max_test_per_class: at most this many random test images per class; None = all.
        test_fraction: without train / test folders, the fraction of each class that is test data.
        batch_size, eval_batch_size, num_workers: loader settings (see :class:`AnomalyDataModule`).
    """

    def __init__(
        self,
        root: str,
        held_out_class: str | int,
        image_size: int = 32,
        channels: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        max_train: int | None = None,
        max_test_per_class: int | None = None,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        if not isinstance(root, str | Path) or not str(root):
            raise ValueError(f"root must be the path of the image folder, got {root!r}")
        if isinstance(held_out_class, bool) or not isinstance(held_out_class, str | int) or not str(held_out_class):
            raise ValueError(f"held_out_class must be a class folder name, got {held_out_class!r}")
        if channels not in (None, 1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1, 3 or None (detect), got {channels!r}")
        self.root = Path(root)
        self.held_out_class = str(held_out_class)
        self.image_size = check_image_size(image_size, minimum=8)
        self.channels = channels
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.seed = check_seed(seed)
        self.max_train = check_optional_count("max_train", max_train, minimum=2)
        self.max_test_per_class = check_optional_count("max_test_per_class", max_test_per_class)
        self.test_fraction = check_fraction("test_fraction", test_fraction)

    def prepare_data(self) -> None:
        """Nothing to download; fails early when the folder layout is wrong."""
        self._records()

    def _records(self) -> tuple[list[ImageRecord], list[ImageRecord], list[str]]:
        """(training source, test source, class names) with the held-out class checked."""
        train, test = find_images(self.root)
        names = sorted(train)
        if self.held_out_class not in names:
            raise DataError(f"image folder {self.root}: held_out_class {self.held_out_class!r} is not one of its "
                            f"classes {names}")
        if test is None:
            return (*split_classes(train, self.test_fraction, self.seed), names)
        return [r for n in names for r in train[n]], [r for n in names for r in test[n]], names

    def load_splits(self) -> DatasetSplits:
        train, test, names = self._records()
        index = {name: i for i, name in enumerate(names)}
        held_out = index[self.held_out_class]
        pool = [r for r in train if r.label != self.held_out_class]
        pool_labels = np.array([index[r.label] for r in pool], dtype=np.int64)
        if self.max_train is not None and self.max_train < len(pool):  # leave_one_class_out's draw, before reading
            keep = stratified_sample(pool_labels, self.max_train, split_rng(self.seed, "subsample"))
            pool, pool_labels = [pool[i] for i in keep], pool_labels[keep]
        test_labels = np.array([index[r.label] for r in test], dtype=np.int64)
        keep = cap_per_class(test_labels, self.max_test_per_class, split_rng(self.seed, "test_cap"))
        test, test_labels = [test[i] for i in keep], test_labels[keep]
        images, _ = load_images(pool + test, self.image_size, self.channels)
        return leave_one_class_out(
            images[:len(pool)], pool_labels, np.array([r.subject for r in pool]),
            images[len(pool):], test_labels, np.array([r.subject for r in test]),
            held_out_class=held_out, max_value=STORE_MAX, image_size=self.image_size,
            val_fraction=self.val_fraction, seed=self.seed, source=f"image folder {self.root}",
        )
