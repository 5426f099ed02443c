"""The data contract every NormBench dataset follows.

Every dataloader yields dict batches with the keys of ``BATCH_KEYS``:

==========  =======================  ==========================================================
key         shape / type             meaning
==========  =======================  ==========================================================
image       float32 [B,C,H,W]        normalised intensities in [0, 1]
mask        float32 [B,1,H,W]        ground-truth anomaly mask in {0, 1}; zeros for healthy data
roi         float32 [B,1,H,W]        pixels that are evaluated (brain mask; ones if unknown)
label       int64 [B]                1 when the slice is anomalous (mask area >= a set minimum)
subject     list[str]                volume / subject id, for per-volume aggregation
slice       int64 [B]                slice index inside its volume
==========  =======================  ==========================================================
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from datamodules.errors import DataError

BATCH_KEYS = ("image", "mask", "roi", "label", "subject", "slice")
HEALTHY_TEST_SET = "healthy"  # the test set of healthy subjects, reference of the evaluator's ``sample.vs_healthy``


@dataclass
class SliceArrays:
    """The slices of one split as arrays (in memory or memory-mapped).

    ``images`` [N,C,H,W] float32, ``masks`` and ``rois`` [N,1,H,W] uint8, ``labels``, ``slices`` [N] int64,
    ``subjects`` [N] str. ``source`` names where the split came from, for error messages.
    """

    images: np.ndarray
    masks: np.ndarray
    rois: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    slices: np.ndarray
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise DataError(
                f"split {self.source} contains no slices: check its file list and the slice selection settings")
        for name in ("masks", "rois", "labels", "subjects", "slices"):
            if len(getattr(self, name)) != n:
                raise DataError(f"split {self.source}: {name} has {len(getattr(self, name))} entries, images have {n}")
        if self.masks.shape[2:] != self.images.shape[2:] or self.rois.shape[2:] != self.images.shape[2:]:
            raise DataError(
                f"split {self.source}: image slices are {self.images.shape[2:]}, masks {self.masks.shape[2:]}, "
                f"rois {self.rois.shape[2:]}; they must match"
            )

    def __len__(self) -> int:
        return len(self.images)


class SliceDataset(Dataset):
    """Map-style dataset of dict items over a ``SliceArrays``; reads one slice per item (cheap on a memmap)."""

    def __init__(self, arrays: SliceArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | int]:
        a = self.arrays
        return {
            "image": torch.from_numpy(np.array(a.images[index], dtype=np.float32)),
            "mask": torch.from_numpy(np.array(a.masks[index], dtype=np.float32)),
            "roi": torch.from_numpy(np.array(a.rois[index], dtype=np.float32)),
            "label": int(a.labels[index]),
            "subject": str(a.subjects[index]),
            "slice": int(a.slices[index]),
        }


@dataclass
class DatasetSplits:
    """All splits of a dataset: healthy train / val, named test sets and an optional unlabelled pool."""

    train: SliceArrays
    val: SliceArrays
    tests: dict[str, SliceArrays]
    unlabelled: SliceArrays | None = None

    def __post_init__(self) -> None:
        if not self.tests:
            raise DataError("the dataset defines no test sets: give at least one named test split")
        # Test sets may share subjects (one image in several per-pathology sets, as in FastMRI+), but no test
        # subject may be in train, val or the unlabelled pool, and those three are disjoint.
        named = {"train": self.train, "val": self.val}
        if self.unlabelled is not None:
            named["unlabelled"] = self.unlabelled
        owner: dict[str, str] = {}
        for split, arrays in named.items():
            for subject in set(arrays.subjects.tolist()):
                if subject in owner:
                    raise DataError(f"subject {subject!r} appears in split {owner[subject]!r} and in {split!r}; "
                                    "splits must be subject-disjoint")
                owner[subject] = split
        for name, arrays in self.tests.items():
            for subject in set(arrays.subjects.tolist()):
                if subject in owner:
                    raise DataError(f"subject {subject!r} appears in split {owner[subject]!r} and in "
                                    f"'test/{name}'; splits must be subject-disjoint")


class SubjectShardSampler(DistributedSampler):
    """Evaluation sampler for multi-device runs: whole subjects per rank, every slice exactly once, in order.

    Lightning's default ``DistributedSampler`` deals slices round-robin and pads the last round with repeated
    slices, which double-counts them in metrics and splits volumes across ranks. This sampler gives each rank
    whole subjects (balanced by slice count, largest first) and keeps the dataset's order, so metrics are
    identical on 1 or N devices and volumes can be reassembled on one rank. Lightning keeps a sampler that is
    already a ``DistributedSampler``.
    """

    def __init__(self, subjects: np.ndarray, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(range(len(subjects)), num_replicas=num_replicas, rank=rank, shuffle=False)
        names, first, inverse, counts = np.unique(subjects, return_index=True, return_inverse=True,
                                                  return_counts=True)
        load = np.zeros(self.num_replicas, dtype=np.int64)
        owner = np.empty(len(names), dtype=np.int64)
        for subject in sorted(range(len(names)), key=lambda i: (-counts[i], first[i])):
            owner[subject] = int(np.argmin(load))
            load[owner[subject]] += counts[subject]
        self.indices = np.flatnonzero(owner[inverse] == self.rank).tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochShuffleSampler(Sampler[int]):
    """Single-device training sampler: a fresh permutation per epoch from ``(seed, epoch)`` alone.

    A plain ``shuffle=True`` draws its order from the global random state, so a run resumed from a checkpoint
    would see other batches than an uninterrupted one; Lightning calls ``set_epoch`` on this sampler like on a
    ``DistributedSampler``, which makes resumed training repeat the uninterrupted run exactly.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)  # unseeded: 64 bit
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class AnomalyDataModule(pl.LightningDataModule):
    """Base class: healthy train / val loaders, one test loader per named test set, an optional unlabelled pool.

    Subclasses implement :meth:`load_splits`; heavy one-off work (generation, cache building) goes in
    ``prepare_data`` so that under DDP it runs once per node.
    """

    def __init__(self, batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.splits: DatasetSplits | None = None

    @abstractmethod
    def load_splits(self) -> DatasetSplits:
        """Return every split as arrays (memory-mapped for large data)."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.load_splits()

    @property
    def test_set_names(self) -> list[str]:
        return list(self._splits.tests)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape [C,H,W] of one image."""
        return tuple(self._splits.train.images.shape[1:])

    @property
    def _splits(self) -> DatasetSplits:
        if self.splits is None:
            self.setup()
        assert self.splits is not None
        return self.splits

    def _loader(self, arrays: SliceArrays, train: bool) -> DataLoader:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if train:  # under DDP Lightning swaps shuffle=True for a DistributedSampler seeded by epoch
            sampler = None if distributed else EpochShuffleSampler(len(arrays), torch.initial_seed())
        else:
            sampler = SubjectShardSampler(arrays.subjects) if distributed else None
        return DataLoader(
            SliceDataset(arrays),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and distributed,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._splits.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._splits.val, train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(arrays, train=False) for arrays in self._splits.tests.values()]

    def unlabelled_dataloader(self) -> DataLoader:
        if self._splits.unlabelled is None:
            raise DataError(f"{type(self).__name__} has no unlabelled pool; configure one to use this method")
        return self._loader(self._splits.unlabelled, train=True)
