"""Adapters for public dataset releases: ``run_benchmark.py prepare NAME --root PATH`` (see ``base.py``)."""

from __future__ import annotations

import importlib

from datamodules.releases.base import Release, ReleaseError

# name -> "module:Class"; imported on use so that one broken adapter never breaks the others
RELEASES: dict[str, str] = {
    "brats": "datamodules.releases.brats:BraTSRelease",
    "ixi": "datamodules.releases.ixi:IXIRelease",
    "hcp": "datamodules.releases.hcp:HCPRelease",
    "atlas": "datamodules.releases.atlas:ATLASRelease",
    "mslub": "datamodules.releases.mslub:MSLUBRelease",
    "msseg2015": "datamodules.releases.msseg:MSSEG2015Release",
    "msseg2016": "datamodules.releases.msseg:MSSEG2016Release",
    "lits": "datamodules.releases.lits:LiTSRelease",
    "oasis": "datamodules.releases.oasis:OASISRelease",
    "fastmri": "datamodules.releases.fastmri:FastMRIRelease",
}


def release_class(name: str) -> type[Release]:
    """The :class:`Release` subclass registered as ``name``."""
    if name not in RELEASES:
        raise ReleaseError(f"unknown dataset release {name!r}; prepare knows {sorted(RELEASES)}")
    module, cls = RELEASES[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["RELEASES", "Release", "ReleaseError", "release_class"]
