"""Volume preprocessing with MONAI: load, validate, orient, normalise, crop, resize, cut into axial slices.

The steps, in order (every one applied identically to image, mask and roi so they stay aligned):

1. load with nibabel (through MONAI's ``LoadImage``), check shapes, finiteness and binary masks; a label map
   (BraTS ``seg``, LiTS ``segmentation``) becomes a binary mask through its record's ``mask_labels`` /
   ``roi_labels``; without a roi file the roi is all ones, or the filled foreground (``roi_from_foreground``);
   a 2D image (PNG / JPEG slice releases) is a volume of depth one in its own orientation;
2. reorient to RAS (``Orientationd``), so axis 2 is inferior -> superior and slices are axial;
3. clip and scale intensities to [0, 1] between two percentiles computed inside the roi (or a fixed
   ``intensity_window``, e.g. a CT HU window or [0, 255] for 8-bit PNGs), zero outside it;
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
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from datamodules.errors import DataError

KEYS = ("image", "mask", "roi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # 2D slice files; everything else is read as NIfTI


def is_2d_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


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
    # Added with the real-dataset adapters; left out of the fingerprint at their defaults, so existing caches stay.
    intensity_window: tuple[float, float] | None = None  # fixed [low, high] -> [0, 1] instead of the percentiles
    roi_from_foreground: bool = False  # rows without a roi file: roi = filled foreground (image above its minimum)
    mask_labels: tuple[int, ...] | None = None  # overrides every record's mask_labels (label grouping)

    def __post_init__(self) -> None:
        lo, hi = self.intensity_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"intensity_percentiles must satisfy 0 <= low < high <= 100, got {self.intensity_percentiles}")
        if self.intensity_window is not None and not (len(self.intensity_window) == 2
                                                      and self.intensity_window[0] < self.intensity_window[1]):
            raise ValueError(f"intensity_window must be [low, high] with low < high, got {self.intensity_window}")
        if self.mask_labels is not None and not self.mask_labels:
            raise ValueError("mask_labels must name at least one label value (or be null to use the split CSVs')")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.slice_range is not None and not 0.0 <= self.slice_range[0] < self.slice_range[1] <= 1.0:
            raise ValueError(
                f"slice_range holds fractions 0 <= start < stop <= 1 of the cropped extent, got {self.slice_range}")

    def fingerprint(self) -> dict:
        data = asdict(self)
        for key, default in _LATER_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        return data


_LATER_DEFAULTS = {"intensity_window": None, "roi_from_foreground": False, "mask_labels": None}


@dataclass(frozen=True)
class VolumeRecord:
    """One row of a split CSV: a subject's image and optional lesion mask and roi."""

    subject: str
    image: Path
    mask: Path | None = None
    roi: Path | None = None
    mask_labels: tuple[int, ...] | None = None  # label values of ``mask`` that are lesion (None: a binary mask)
    roi_labels: tuple[int, ...] | None = None  # label values of ``roi`` inside the region (None: a binary mask)

    def paths(self) -> list[Path]:
        return [p for p in (self.image, self.mask, self.roi) if p is not None]

    def labels_key(self) -> list | None:
        """The label groupings for cache keys (None when both files are plain binary masks)."""
        if self.mask_labels is None and self.roi_labels is None:
            return None
        return [list(self.mask_labels or ()), list(self.roi_labels or ())]


@dataclass
class VolumeSlices:
    """Slices of one preprocessed volume."""

    images: np.ndarray  # [S,1,H,W] float32
    masks: np.ndarray  # [S,1,H,W] uint8
    rois: np.ndarray  # [S,1,H,W] uint8
    slices: np.ndarray  # [S] int64, index in the RAS-oriented, cropped volume
    labels: np.ndarray  # [S] int64


class ScaleIntensityPercentilesInRoid(MapTransform):
    """Clip ``image`` to [p_low, p_high] percentiles of its values inside ``roi`` (or to a fixed ``window``) and
    scale that range to [0, 1]."""

    def __init__(self, percentiles: tuple[float, float], zero_outside_roi: bool, source: str = "",
                 window: tuple[float, float] | None = None) -> None:
        super().__init__(keys=["image"])
        self.percentiles = percentiles
        self.window = window
        self.zero_outside_roi = zero_outside_roi
        self.source = source

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image, roi = d["image"], _plain(d["roi"]) > 0
        if not roi.any():
            raise DataError(f"{self.source}: the roi is empty, so no intensities can be normalised; check the roi file")
        if self.window is not None:
            lo, hi = self.window
        else:
            inside = _plain(image)[roi.expand_as(image)].float()
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


def load_image_2d(path: Path, what: str, subject: str) -> MetaTensor:
    """Load a PNG / JPEG slice as a channel-first volume [1, W, H, 1] (identity affine).

    The array is stored so that the slice cutter's ``rot90`` gives back the picture as it is displayed (row 0 at
    the top). Colour files must be grey in all channels (RGB with equal channels, optional alpha).
    """
    if not path.is_file():
        raise DataError(f"{what} file of subject {subject!r} not found: {path}")
    try:
        with Image.open(path) as picture:
            picture.load()
            array = np.asarray(picture)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"cannot read {what} file {path} of subject {subject!r} ({type(error).__name__}: {error}); "
                        "it is not a valid image file, re-export or remove it") from error
    if array.ndim == 3:
        colour = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        if not (colour == colour[..., :1]).all():
            raise DataError(f"{what} file {path} is a colour image; slice datasets are grayscale (convert it, or use "
                            "the image_folder dataset for RGB images)")
        array = colour[..., 0]
    plane = np.rot90(array.astype(np.float32), k=-1).copy()
    return MetaTensor(torch.from_numpy(plane)[None, :, :, None], affine=torch.eye(4, dtype=torch.float64))


def _load_any(path: Path, what: str, subject: str) -> MetaTensor:
    return load_image_2d(path, what, subject) if is_2d_image(path) else load_nifti(path, what, subject)


def _binary(volume: MetaTensor, path: Path, what: str, labels: tuple[int, ...] | None) -> MetaTensor:
    """A 0/1 volume from a binary mask file, or from a label map and the label values that count."""
    values = _plain(volume)
    if labels is not None:
        if not torch.equal(values, values.round()):
            raise DataError(f"{what} file {path} holds non-integer values, so it is not a label map; "
                            f"expected integer labels (selected: {list(labels)})")
        return _like(volume, torch.isin(values, torch.tensor(labels, dtype=values.dtype)).to(values.dtype))
    if is_2d_image(path) and values.max() > 1:  # 8-bit PNG masks are stored as 0 / 255
        values = values / values.max()
    if not ((values == 0) | (values == 1)).all():
        found = torch.unique(values)[:6].tolist()
        raise DataError(f"{what} file {path} is not binary (values include {found}); masks must contain only 0 and 1 "
                        "(0 / 255 for 8-bit images), or give the label values that count (mask_labels / roi_labels)")
    return _like(volume, values)


def _like(reference: MetaTensor, values: torch.Tensor) -> MetaTensor:
    """``values`` with the affine and metadata of ``reference``."""
    return MetaTensor(values, meta=dict(reference.meta))  # the meta carries the affine


def filled_foreground(values: np.ndarray) -> np.ndarray:
    """Boolean foreground of a background-zero 2D image or 3D volume: values above the minimum, holes filled (in
    3D, and then in every axial slice: a ventricle open at one end is still a hole in the slices through it)."""
    filled = ndimage.binary_fill_holes(values > values.min())
    if filled.ndim == 3:
        for k in range(filled.shape[2]):
            filled[:, :, k] = ndimage.binary_fill_holes(filled[:, :, k])
    return filled


def foreground_roi(image: torch.Tensor) -> torch.Tensor:
    """:func:`filled_foreground` of a channel-first volume (a 2D image is a volume of depth one)."""
    values = _plain(image)[0].numpy()
    plane = values[:, :, 0] if values.shape[2] == 1 else values  # a depth-one volume has only 2D holes
    filled = filled_foreground(plane).reshape(values.shape)
    return torch.from_numpy(filled.astype(np.float32))[None]


def load_volume(record: VolumeRecord, settings: PreprocessingSettings | None = None) -> dict[str, MetaTensor]:
    """Load and validate image, mask and roi of one subject (missing mask -> zeros, missing roi -> ones or the
    foreground when ``settings.roi_from_foreground``); label maps become binary through the record's labels."""
    settings = settings or PreprocessingSettings()
    image = _load_any(record.image, "image", record.subject)
    if image.shape[0] != 1:
        raise DataError(f"image file {record.image} has {image.shape[0]} channels / frames; NormBench expects one 3D "
                        "volume per file (split multi-modal data into one column per modality)")
    values = _plain(image)
    if not torch.isfinite(values).all():
        n_bad = int((~torch.isfinite(values)).sum())
        raise DataError(f"image file {record.image} contains {n_bad} NaN/Inf voxels; fix or remove the file")
    data = {"image": image}
    mask_labels = settings.mask_labels if settings.mask_labels is not None else record.mask_labels
    for key, path, labels in (("mask", record.mask, mask_labels), ("roi", record.roi, record.roi_labels)):
        if path is None:
            if key == "mask":
                data[key] = torch.zeros_like(image)
            elif settings.roi_from_foreground:
                data[key] = _like(image, foreground_roi(image))
            else:
                data[key] = torch.ones_like(image)
            continue
        volume = _load_any(path, key, record.subject)
        if volume.shape != image.shape:
            raise DataError(f"{key} file {path} has shape {tuple(volume.shape[1:])} but image {record.image} has "
                            f"{tuple(image.shape[1:])}; they must be voxel-aligned")
        data[key] = _binary(volume, path, key, labels)
    return data


def preprocess_volume(record: VolumeRecord, settings: PreprocessingSettings) -> VolumeSlices:
    """Run the whole pipeline for one subject and return its selected axial slices."""
    data = load_volume(record, settings)
    data = Orientationd(keys=KEYS, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(data)
    data = ScaleIntensityPercentilesInRoid(settings.intensity_percentiles, settings.zero_outside_roi,
                                           source=str(record.image), window=settings.intensity_window)(data)
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
