"""scikit-learn's handwritten digits as a leave-one-class-out anomaly detection benchmark (no download).

The data are the 1797 8x8 digit images bundled with scikit-learn (``sklearn.datasets.load_digits``, UCI optical
recognition of handwritten digits, values 0..16), scaled by 1/16 and upsampled bilinearly to ``image_size``. The
protocol is the leave-one-class-out setting of Zimmerer et al., "Unsupervised anomaly localization using
variational auto-encoders" (MICCAI 2019), which they ran on FashionMNIST; see
:mod:`datamodules.leave_one_class_out`.

As the digits have no official train / test split, the images of the nine normal classes are split stratified by
class: ``test_fraction`` of them form the ``healthy`` test set and the rest is the training pool, of which
``val_fraction`` is ``val``. Every image of the held-out class is in the ``anomalous`` test set. Subject ids are
``digits/<index in load_digits>``.
"""

from __future__ import annotations

import numpy as np

from datamodules.base import AnomalyDataModule, DatasetSplits
from datamodules.leave_one_class_out import (
    check_fraction,
    check_held_out_class,
    check_image_size,
    check_seed,
    leave_one_class_out,
    split_rng,
    stratified_split,
)

__all__ = ["DIGITS_CLASSES", "DigitsDataModule", "load_digit_arrays"]

DIGITS_CLASSES = tuple(range(10))
DIGITS_MAX_VALUE = 16.0
_SOURCE = "digits (sklearn.datasets.load_digits)"


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits: images [1797,8,8] float64 with values 0..16 and labels [1797] int64."""
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import

    digits = load_digits()
    return np.asarray(digits.images), np.asarray(digits.target, dtype=np.int64)


class DigitsDataModule(AnomalyDataModule):
    """Leave-one-class-out on scikit-learn's 8x8 digits; test sets ``healthy`` and ``anomalous``.

    Args:
        held_out_class: the digit (0..9) that is anomalous and absent from training.
        image_size: side length of the upsampled images (>= 8, the native size).
        test_fraction: stratified fraction of the normal digits that form the ``healthy`` test set.
        val_fraction: stratified fraction of the remaining training pool used for validation.
        seed: dataset seed of the splits (independent of the training seed).
        batch_size, eval_batch_size, num_workers: loader settings (see :class:`AnomalyDataModule`).
    """

    def __init__(
        self,
        held_out_class: int = 0,
        image_size: int = 32,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        self.held_out_class = check_held_out_class(held_out_class, DIGITS_CLASSES, _SOURCE)
        self.image_size = check_image_size(image_size, minimum=8)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.seed = check_seed(seed)

    def load_splits(self) -> DatasetSplits:
        images, labels = load_digit_arrays()
        ids = np.array([f"digits/{i:04d}" for i in range(len(labels))])
        held_out = self.held_out_class
        normal = np.flatnonzero(labels != held_out)
        pool_part, test_part = stratified_split(labels[normal], self.test_fraction, split_rng(self.seed, "test"))
        pool = normal[pool_part]
        test = np.sort(np.concatenate([normal[test_part], np.flatnonzero(labels == held_out)]))
        return leave_one_class_out(
            images[pool], labels[pool], ids[pool], images[test], labels[test], ids[test],
            held_out_class=held_out, max_value=DIGITS_MAX_VALUE, image_size=self.image_size,
            val_fraction=self.val_fraction, seed=self.seed, source=_SOURCE,
        )
