"""Loader throughput: memory-mapped slice cache vs reading NIfTI files per item, side by side in one run.

    python benchmarks/loader.py [--dataset synthetic_brain] [--items 2048] [--nifti-items 96] [--batch-size 32]

Three loaders deliver the same training slices in random order through a ``DataLoader`` (num_workers=0):

* ``cache``: NormBench's path, ``SliceDataset`` over the memory-mapped cache;
* ``nifti+preprocess``: each item loads its volume with MONAI/nibabel and runs the full preprocessing, then takes
  its slice (what a loader without a cache does);
* ``nifti-only``: each item only decompresses its volume with nibabel and takes a raw slice (a lower bound for
  any per-item NIfTI loader, with no preprocessing at all).
Prints a Markdown table (items/s and speed-up of the cache) for docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmark.config import load_component
from datamodules.base import SliceDataset
from datamodules.preprocessing import VolumeRecord, preprocess_volume


class NiftiPerItem(Dataset):
    """Slice ``i`` = slice ``position`` of volume ``record``, read from its NIfTI file on every access."""

    def __init__(self, records: list[VolumeRecord], items: list[tuple[int, int]], settings, preprocess: bool):
        self.records, self.items, self.settings, self.preprocess = records, items, settings, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        record_index, position = self.items[i]
        record = self.records[record_index]
        if self.preprocess:
            volume = preprocess_volume(record, self.settings)
            return {"image": torch.from_numpy(volume.images[position]),
                    "mask": torch.from_numpy(volume.masks[position])}
        data = np.asarray(nib.load(record.image).dataobj, dtype=np.float32)
        k = min(position, data.shape[2] - 1)
        return {"image": torch.from_numpy(data[None, :, :, k].copy())}


def throughput(dataset: Dataset, n_items: int, batch_size: int, seed: int = 0) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    seen, start = 0, time.perf_counter()
    while seen < n_items:
        for batch in loader:
            seen += batch["image"].shape[0]
            if seen >= n_items:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic_brain")
    parser.add_argument("--items", type=int, default=2048, help="slices read from the cache")
    parser.add_argument("--nifti-items", type=int, default=96, help="slices read per item from NIfTI (slow)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    datamodule = load_component("datasets", args.dataset).instantiate(progress=False)
    datamodule.prepare_data()  # generation and cache building are not timed
    cache = datamodule.caches()["train"]
    arrays = cache.open()
    records = cache.records
    index = {r.subject: i for i, r in enumerate(records)}
    first = {s: int(np.flatnonzero(arrays.subjects == s)[0]) for s in index}
    items = [(index[s], i - first[s]) for i, s in enumerate(arrays.subjects)]

    rows = [("cache (memmap)", throughput(SliceDataset(arrays), args.items, args.batch_size))]
    for name, preprocess in (("nifti+preprocess per item", True), ("nifti-only per item", False)):
        dataset = NiftiPerItem(records, items, datamodule.settings, preprocess)
        rows.append((name, throughput(dataset, args.nifti_items, args.batch_size)))
    cached = rows[0][1]
    print(f"dataset {args.dataset}: {len(arrays)} training slices of {tuple(arrays.images.shape[1:])}, "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print("| loader | slices/s | cache speed-up |\n|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.1f} | {cached / rate:,.0f}x |")


if __name__ == "__main__":
    main()
