"""LightningDataModules for NormBench: the data contract, the NIfTI slice pipeline and embedded datasets."""

from datamodules.base import BATCH_KEYS, AnomalyDataModule, SliceDataset
from datamodules.errors import DataError

__all__ = ["BATCH_KEYS", "AnomalyDataModule", "DataError", "SliceDataset"]
