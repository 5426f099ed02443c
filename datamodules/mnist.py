"""MNIST / FashionMNIST from local IDX files as a leave-one-class-out anomaly detection benchmark.

Protocol of Zimmerer et al., "Unsupervised anomaly localization using variational auto-encoders" (MICCAI 2019),
FashionMNIST experiment: one class is left out of training and is the anomaly at test time. The training pool is
the official ``train`` split without the held-out class (``val_fraction`` of it, stratified, is ``val``); the test
sets are the official ``t10k`` images of the nine other classes (``healthy``, label 0) and of the held-out class
(``anomalous``, label 1). See :mod:`datamodules.leave_one_class_out`.

NormBench does not download the data. ``root`` must hold the four files of the release, each plain or gzipped::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

Subject ids are ``mnist/train/<index>`` and ``mnist/t10k/<index>`` (index in the release file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.base import AnomalyDataModule, DatasetSplits
from datamodules.errors import DataError
from datamodules.idx import read_idx
from datamodules.leave_one_class_out import (
    check_fraction,
    check_held_out_class,
    check_image_size,
    check_optional_count,
    check_seed,
    leave_one_class_out,
)

__all__ = ["MNIST_CLASSES", "MNIST_FILES", "MNISTDataModule", "find_mnist_files", "load_mnist_split"]

MNIST_CLASSES = tuple(range(10))
MNIST_MAX_VALUE = 255.0
MNIST_FILES: dict[str, tuple[str, str]] = {  # split -> (images, labels) file names without .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"


def _missing_message(root: Path, problem: str) -> str:
    names = [name for pair in MNIST_FILES.values() for name in pair]
    return (
        f"MNIST / FashionMNIST data not found: {problem}. The folder {root} (absolute: {root.resolve()}) must hold "
        f"these four files, each plain or gzip-compressed with a .gz suffix: {', '.join(names)} "
        f"(or {', '.join(n + '.gz' for n in names)}). NormBench does not download MNIST or FashionMNIST: get MNIST "
        f"from the official MNIST page ({MNIST_URL}) and FashionMNIST from the zalandoresearch/fashion-mnist GitHub "
        f"release ({FASHION_MNIST_URL}, files data/fashion/*.gz, linked in its README under 'Get the Data'), put "
        "them in one folder, and point the dataset config at it: override datasets.mnist.root=/path/to/folder "
        "(datasets.fashion_mnist.root=... for FashionMNIST) or set init_args.root in configs/datasets/mnist.yaml "
        "or configs/datasets/fashion_mnist.yaml."
    )


def find_mnist_files(root: str | Path) -> dict[str, Path]:
    """File name (without .gz) -> existing path in ``root`` (uncompressed preferred); DataError listing what to do."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(_missing_message(root, f"folder {root} does not exist"))
    found, missing = {}, []
    for name in (n for pair in MNIST_FILES.values() for n in pair):
        candidates = [root / name, root / f"{name}.gz"]
        existing = [p for p in candidates if p.is_file()]
        if existing:
            found[name] = existing[0]
        else:
            missing.append(f"{name}[.gz]")
    if missing:
        raise DataError(_missing_message(root, f"missing {', '.join(missing)} in {root}"))
    return found


def load_mnist_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N,H,W] uint8 and labels [N] int64 of one split (``train`` or ``t10k``), validated."""
    image_file, label_file = (files[name] for name in MNIST_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{image_file}: expected 3-D uint8 images [N,H,W], got a {images.ndim}-D {images.dtype} "
                        f"array of shape {images.shape}; is this an images file (idx3-ubyte)?")
    if labels.ndim != 1:
        raise DataError(f"{label_file}: expected 1-D labels [N], got shape {labels.shape}; "
                        "is this a labels file (idx1-ubyte)?")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{label_file}: expected integer labels, got {labels.dtype}")
    if len(images) != len(labels):
        raise DataError(f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels; "
                        "the files must come from the same release")
    bad = (labels < 0) | (labels > 9)
    if bad.any():
        raise DataError(f"{label_file}: labels must be in 0..9, found {sorted(set(labels[bad].tolist()))[:10]}")
    return images, labels.astype(np.int64)


class MNISTDataModule(AnomalyDataModule):
    """Leave-one-class-out on MNIST or FashionMNIST read from ``root``; test sets ``healthy`` and ``anomalous``.

    Args:
        root: folder with the four IDX files of the release (plain or .gz); nothing is downloaded.
        held_out_class: the class (0..9) that is anomalous and absent from training.
        image_size: side length of the resized images (>= 8; 28 keeps the native size).
        val_fraction: stratified fraction of the training pool used for validation.
        max_train: stratified random subsample of the training pool (train + val) for CPU runs; None = all.
        max_test_per_class: at most this many random t10k images per class; None = all.
        seed: dataset seed of the splits (independent of the training seed).
        batch_size, eval_batch_size, num_workers: loader settings (see :class:`AnomalyDataModule`).
    """

    def __init__(
        self,
        root: str,
        held_out_class: int = 0,
        image_size: int = 28,
        val_fraction: float = 0.1,
        max_train: int | None = None,
        max_test_per_class: int | None = None,
        seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        if not isinstance(root, str | Path) or not str(root):
            raise ValueError(f"root must be the path of the folder with the MNIST / FashionMNIST files, got {root!r}")
        self.root = Path(root)
        self.held_out_class = check_held_out_class(held_out_class, MNIST_CLASSES, f"MNIST / FashionMNIST in {root}")
        self.image_size = check_image_size(image_size, minimum=8)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.max_train = check_optional_count("max_train", max_train, minimum=2)
        self.max_test_per_class = check_optional_count("max_test_per_class", max_test_per_class)
        self.seed = check_seed(seed)

    def prepare_data(self) -> None:
        """Nothing to download or cache; fails early with instructions when files are missing."""
        find_mnist_files(self.root)

    def load_splits(self) -> DatasetSplits:
        files = find_mnist_files(self.root)
        train_images, train_labels = load_mnist_split(files, "train")
        test_images, test_labels = load_mnist_split(files, "t10k")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise DataError(f"{files[MNIST_FILES['train'][0]]} has images of {train_images.shape[1:]} pixels, "
                            f"{files[MNIST_FILES['t10k'][0]]} of {test_images.shape[1:]}; they must match")
        return leave_one_class_out(
            train_images, train_labels, np.array([f"mnist/train/{i:05d}" for i in range(len(train_labels))]),
            test_images, test_labels, np.array([f"mnist/t10k/{i:05d}" for i in range(len(test_labels))]),
            held_out_class=self.held_out_class, max_value=MNIST_MAX_VALUE, image_size=self.image_size,
            val_fraction=self.val_fraction, seed=self.seed, max_train=self.max_train,
            max_test_per_class=self.max_test_per_class, source=f"MNIST / FashionMNIST in {self.root}",
        )
