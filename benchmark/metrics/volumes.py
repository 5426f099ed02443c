"""Reassembling volumes from slices that arrive in batches (and, under DDP, on the rank that owns the subject).

Evaluation loaders of :class:`~datamodules.base.AnomalyDataModule` keep every subject on one rank
(:class:`~datamodules.base.SubjectShardSampler`) and in slice order, so a volume completes on one rank and at most
one partial volume per rank is held in memory. Per-volume *counts* do not need this: they are indexed by subject
and sum-reduced across ranks (see :class:`~benchmark.metrics.thresholded.ThresholdedCounts`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.metrics.postprocessing import PostProcessing


def slices_per_subject(subjects: np.ndarray | list[str]) -> dict[str, int]:
    """Number of slices of every subject in a split (what a volume needs before it is complete)."""
    names, counts = np.unique(np.asarray(subjects, dtype=str), return_counts=True)
    return dict(zip(names.tolist(), counts.tolist(), strict=True))


@dataclass
class Volume:
    """One subject's evaluated slices, stacked in slice order (gaps between selected slices are closed)."""

    subject: str
    slices: np.ndarray  # [D] slice indices in the original volume
    anomaly_map: np.ndarray  # [D,H,W] float32
    mask: np.ndarray  # [D,H,W] bool
    roi: np.ndarray  # [D,H,W] bool


class VolumeAssembler:
    """Collects slices per subject; :meth:`add` returns every volume whose slices have all arrived.

    ``expected`` maps each subject to its number of slices in this evaluation set.
    """

    def __init__(self, expected: Mapping[str, int]) -> None:
        self.expected = dict(expected)
        self._parts: dict[str, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._done: set[str] = set()

    def add(self, batch: dict[str, Any], anomaly_map: Tensor) -> list[Volume]:
        maps = anomaly_map[:, 0].detach().float().cpu().numpy()
        masks = (batch["mask"][:, 0] > 0.5).cpu().numpy()
        rois = (batch["roi"][:, 0] > 0.5).cpu().numpy()
        slices = batch["slice"].cpu().numpy()
        complete = []
        for i, subject in enumerate(batch["subject"]):
            if subject not in self.expected:
                raise ValueError(f"subject {subject!r} is not part of this evaluation set")
            if subject in self._done:
                raise ValueError(f"subject {subject!r}: more slices than expected ({self.expected[subject]}); "
                                 "is the same slice evaluated twice (a padding sampler under DDP)?")
            parts = self._parts.setdefault(subject, [])
            if any(part[0] == int(slices[i]) for part in parts):
                raise ValueError(f"subject {subject!r}: slice {int(slices[i])} arrived twice; is a sampler "
                                 "repeating slices (Lightning's padding DistributedSampler under DDP)?")
            parts.append((int(slices[i]), maps[i], masks[i], rois[i]))
            if len(parts) == self.expected[subject]:
                complete.append(self._stack(subject, self._parts.pop(subject)))
                self._done.add(subject)
        return complete

    @staticmethod
    def _stack(subject: str, parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> Volume:
        parts.sort(key=lambda part: part[0])
        slices, maps, masks, rois = zip(*parts, strict=True)
        return Volume(subject, np.asarray(slices), np.stack(maps), np.stack(masks), np.stack(rois))

    def finish(self) -> None:
        """Raise if a volume is still incomplete at the end of the epoch."""
        if self._parts:
            missing = {s: f"{len(p)} of {self.expected[s]}" for s, p in list(self._parts.items())[:5]}
            raise ValueError(f"incomplete volumes at the end of evaluation (slices seen on this rank: {missing}); "
                             "evaluation loaders must keep each subject on one rank, as AnomalyDataModule does")


@dataclass
class MapChunk:
    """Slices ready for metrics: (post-processed) maps, masks and roi ``[S,H,W]``, with subjects and slices."""

    anomaly_map: Tensor  # float32
    mask: Tensor  # bool
    roi: Tensor  # bool
    subjects: list[str]
    volume: Volume | None = None  # set when the chunk is one reassembled, post-processed volume


class MapStream:
    """Turns (batch, anomaly map) pairs into :class:`MapChunk` s under a post-processing profile.

    Without post-processing every batch is one chunk (nothing is buffered); otherwise slices are reassembled
    into volumes and each complete volume, post-processed, is one chunk.
    """

    def __init__(self, postprocessing: PostProcessing, expected: Mapping[str, int]) -> None:
        self.postprocessing = postprocessing
        self.assembler = None if postprocessing.is_identity else VolumeAssembler(expected)

    def __call__(self, batch: dict[str, Any], anomaly_map: Tensor) -> Iterator[MapChunk]:
        if self.assembler is None:
            yield MapChunk(anomaly_map[:, 0].float(), batch["mask"][:, 0] > 0.5, batch["roi"][:, 0] > 0.5,
                           list(batch["subject"]))
            return
        for volume in self.assembler.add(batch, anomaly_map):
            prepared = self.postprocessing.prepare(volume.anomaly_map, volume.roi)
            yield MapChunk(torch.from_numpy(prepared), torch.from_numpy(volume.mask), torch.from_numpy(volume.roi),
                           [volume.subject] * len(volume.slices), volume)

    def flags(self, chunk: MapChunk, thresholds: Tensor) -> Tensor:
        """``[S,T,H,W]`` bool: pixels flagged at each threshold (after component removal, if any)."""
        if self.assembler is None or self.postprocessing.min_component_size <= 1:
            return chunk.anomaly_map[:, None] >= thresholds.to(chunk.anomaly_map)[None, :, None, None]
        prepared = chunk.anomaly_map.numpy()
        return torch.from_numpy(np.stack([self.postprocessing.binarise(prepared, float(t)) for t in thresholds], 1))

    def finish(self) -> None:
        if self.assembler is not None:
            self.assembler.finish()
