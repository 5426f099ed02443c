"""NormBench methods: one LightningModule per method, shared network blocks in ``nets``."""

from lightning_modules.base import AnomalyModule, AnomalyOutput, GenerativeModel

__all__ = ["AnomalyModule", "AnomalyOutput", "GenerativeModel"]
