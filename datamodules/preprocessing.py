"""Volume preprocessing with MONAI: load, validate, orient, normalise, crop, resize, cut into axial slices.

The steps, in order (every one applied identically to image, mask and roi so they stay aligned):

1. load with nibabel (through MONAI's ``LoadImage``), check shapes, finiteness and binary masks;
2. reorient to RAS (``Orientationd``), so axis 2 is inferior -> superior and slices are axial;
3. clip and scale intensities to [0, 1] between two percentiles computed inside the roi, zero outside it;
4. crop to the roi's bounding box, pad the in-plane extent to a square (aspect ratio kept);
5. resize in-plane to ``image_size`` (anti-aliased trilinear for the image, trilinear + threshold 0.5 for masks);
6. keep axial slices inside ``slice_range`` (fractions of the cropped extent) whose roi covers at least
   ``min_roi_fraction`` of the slice; label a slice anomalous when its mask has >= ``min_lesion_pixels`` pixels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, LoadImage, MapTransform, Orientationd, Resized, SpatialPadd

from datamodules.errors import DataError

KEYS = ("image", "mask", "roi")


@dataclass(frozen=True)
class PreprocessingSettings:
    """Settings of the volume -> slice pipeline; part of the slice-cache key."""

    image_size: int = 64
    intensity_percentiles: tuple[float, float] = (1.0, 99.0)
    zero_outside_roi: bool = True
    crop_to_roi: bool = True
    slice_range: tuple[float, float] | None = None
    min_roi_fraction: float = 0.05
    min_lesion_pixels: int = 10

    def __post_init__(self) -> None:
        lo, hi = self.intensity_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"intensity_percentiles must satisfy 0 <= low < high <= 100, got {self.intensity_percentiles}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.slice_range is not None and not 0.0 <= self.slice_range[0] < self.slice_range[1] <= 1.0:
            raise ValueError(
                f"slice_range holds fractions 0 <= start < stop <= 1 of the cropped extent, got {self.slice_range}")

    def fingerprint(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VolumeRecord:
    """One row of a split CSV: a subject's image and optional lesion mask and roi."""

    subject: str
    image: Path
    mask: Path | None = None
    roi: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.image, self.mask, self.roi) if p is not None]


@dataclass
class VolumeSlices:
    """Slices of one preprocessed volume."""

    images: np.ndarray  # [S,1,H,W] float32
    masks: np.ndarray  # [S,1,H,W] uint8
    rois: np.ndarray  # [S,1,H,W] uint8
    slices: np.ndarray  # [S] int64, index in the RAS-oriented, cropped volume
    labels: np.ndarray  # [S] int64


class ScaleIntensityPercentilesInRoid(MapTransform):
    """Clip ``image`` to [p_low, p_high] percentiles of its values inside ``roi`` and scale that range to [0, 1]."""

    def __init__(self, percentiles: tuple[float, float], zero_outside_roi: bool, source: str = "") -> None:
        super().__init__(keys=["image"])
        self.percentiles = percentiles
        self.zero_outside_roi = zero_outside_roi
        self.source = source

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image, roi = d["image"], _plain(d["roi"]) > 0
        inside = _plain(image)[roi.expand_as(image)].float()
        if inside.numel() == 0:
            raise DataError(f"{self.source}: the roi is empty, so no intensities can be normalised; check the roi file")
        q = torch.tensor(self.percentiles, dtype=torch.float64) / 100.0
        lo, hi = torch.quantile(_subsample(inside).double(), q).tolist()
        if hi <= lo:
            raise DataError(
                f"{self.source}: intensities are constant inside the roi ({lo}); the image looks empty or corrupt")
        scaled = ((image - lo) / (hi - lo)).clamp(0.0, 1.0)  # stays a MetaTensor (keeps the affine)
        if self.zero_outside_roi:
            scaled = scaled * roi
        d["image"] = scaled.float()
        return d


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The plain tensor behind a MetaTensor: element-wise checks on MetaTensors are many times slower."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def _subsample(values: torch.Tensor, limit: int = 4_000_000) -> torch.Tensor:
    """torch.quantile refuses inputs above 16M elements; a strided subsample is exact enough for percentiles."""
    if values.numel() <= limit:
        return values
    return values[:: int(np.ceil(values.numel() / limit))]


_loader = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32)


def load_nifti(path: Path, what: str, subject: str) -> MetaTensor:
    """Load one NIfTI file as a channel-first MetaTensor, with an error that names the file when it fails."""
    if not path.is_file():
        raise DataError(f"{what} file of subject {subject!r} not found: {path}")
    try:
        return _loader(str(path))
    except Exception as error:  # nibabel / gzip / MONAI raise many types for corrupt files
        raise DataError(f"cannot read {what} file {path} of subject {subject!r} ({type(error).__name__}: {error}); "
                        "it is not a valid NIfTI file, re-export or remove it") from error


def load_volume(record: VolumeRecord) -> dict[str, MetaTensor]:
    """Load and validate image, mask and roi of one subject (missing mask -> zeros, missing roi -> ones)."""
    image = load_nifti(record.image, "image", record.subject)
    if image.shape[0] != 1:
        raise DataError(f"image file {record.image} has {image.shape[0]} channels / frames; NormBench expects one 3D "
                        "volume per file (split multi-modal data into one column per modality)")
    values = _plain(image)
    if not torch.isfinite(values).all():
        n_bad = int((~torch.isfinite(values)).sum())
        raise DataError(f"image file {record.image} contains {n_bad} NaN/Inf voxels; fix or remove the file")
    data = {"image": image}
    for key, path in (("mask", record.mask), ("roi", record.roi)):
        if path is None:
            fill = torch.zeros_like(image) if key == "mask" else torch.ones_like(image)
            data[key] = fill
            continue
        volume = load_nifti(path, key, record.subject)
        if volume.shape != image.shape:
            raise DataError(f"{key} file {path} has shape {tuple(volume.shape[1:])} but image {record.image} has "
                            f"{tuple(image.shape[1:])}; they must be voxel-aligned")
        labels = _plain(volume)
        if not ((labels == 0) | (labels == 1)).all():
            values = torch.unique(labels)[:6].tolist()
            raise DataError(f"{key} file {path} is not binary (values include {values}); masks must contain "
                            "only 0 and 1 (map label values to a binary mask first)")
        data[key] = volume
    return data


def preprocess_volume(record: VolumeRecord, settings: PreprocessingSettings) -> VolumeSlices:
    """Run the whole pipeline for one subject and return its selected axial slices."""
    data = load_volume(record)
    data = Orientationd(keys=KEYS, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(data)
    data = ScaleIntensityPercentilesInRoid(settings.intensity_percentiles, settings.zero_outside_roi,
                                           source=str(record.image))(data)
    if settings.crop_to_roi:
        data = CropForegroundd(keys=KEYS, source_key="roi", select_fn=lambda x: x > 0, allow_smaller=True)(data)
    side = max(data["image"].shape[1:3])
    data = SpatialPadd(keys=KEYS, spatial_size=(side, side, -1))(data)
    size = (settings.image_size, settings.image_size, -1)
    data = Resized(keys=KEYS, spatial_size=size, mode="trilinear", anti_aliasing=(True, False, False))(data)
    image = data["image"].as_tensor()[0].clamp(0.0, 1.0)
    mask = (data["mask"].as_tensor()[0] >= 0.5).to(torch.uint8)
    roi = (data["roi"].as_tensor()[0] >= 0.5).to(torch.uint8)
    if settings.zero_outside_roi:
        image = image * roi
    return _select_slices(image.numpy(), mask.numpy(), roi.numpy(), settings)


def _select_slices(
    image: np.ndarray, mask: np.ndarray, roi: np.ndarray, settings: PreprocessingSettings
) -> VolumeSlices:
    """Cut [H,W,Z] volumes into axial slices (anterior at the top), keeping the configured range and roi coverage."""
    depth = image.shape[2]
    start, stop = 0, depth
    if settings.slice_range is not None:
        start = int(np.floor(settings.slice_range[0] * depth))
        stop = max(start + 1, int(np.ceil(settings.slice_range[1] * depth)))
    keep = [k for k in range(start, stop) if roi[:, :, k].mean() >= settings.min_roi_fraction]

    def stack(volume: np.ndarray, dtype: type) -> np.ndarray:
        if not keep:
            return np.zeros((0, 1, *volume.shape[:2][::-1]), dtype=dtype)
        return np.stack([np.rot90(volume[:, :, k]) for k in keep])[:, None].astype(dtype)

    masks = stack(mask, np.uint8)
    lesion_pixels = masks.reshape(len(keep), -1).sum(axis=1) if keep else np.zeros(0, np.int64)
    return VolumeSlices(
        images=stack(image, np.float32),
        masks=masks,
        rois=stack(roi, np.uint8),
        slices=np.asarray(keep, dtype=np.int64),
        labels=(lesion_pixels >= settings.min_lesion_pixels).astype(np.int64),
    )
