"""Errors raised for bad input data: each message names the file or key and what to do."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used as it is (missing, unreadable, inconsistent or invalid values)."""
