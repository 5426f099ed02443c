"""Synthetic brain MRI generator for NormBench.

Every subject is the MNI152 2009c T1 template bundled with nilearn (intensities /255, WM ~0.84, background 0), moved
by its own random smooth elastic deformation and small affine transform, with optional lesions painted into the
anatomy and then scanner effects (gamma change, bias field, Rician noise, all MONAI) applied on top, so they act on
the lesions too. Lesion masks are exact: a voxel is in the mask if and only if the lesion was blended into it, so
outside the mask the lesioned anatomy equals the subject's healthy anatomy. A subject's anatomy depends only on
(seed, subject id), so every subject is reproducible on its own.

Layout of ``generate_synthetic_brain(root, spec)``'s folder ``root / "seed{seed}-{hash8}"``::

    images/<subject>.nii.gz   float32 T1-like image
    masks/<subject>.nii.gz    uint8 lesion mask (all zero for healthy subjects)
    brain/<subject>.nii.gz    uint8 brain mask (the ``roi`` column)
    splits/<split>.csv        subject,image,mask,roi with paths relative to the CSV's folder
    manifest.json             spec, generator version, subjects and files; written last (completion marker)

Splits: ``train``, ``val``, ``test_healthy`` (healthy), ``test_<kind>`` per lesion kind and ``unlabelled`` (a shuffled
mix of healthy and lesioned subjects whose masks are written but meant to stay unused).

Lesion kinds (one test split each):

* ``tumor``: one large irregular mass with a hypointense necrotic core, a hyperintense enhancing rim and a
  surrounding hypointense oedema, plus a mild mass effect (radial push of the surrounding tissue). The mass effect is
  part of the subject's anatomy, not of the mask, as in real annotated data.
* ``ms``: several small ovoid hyperintense white-matter lesions, some periventricular and oriented away from the
  ventricles. MS lesions are hyperintense on FLAIR/T2; drawing them hyperintense on a T1 template mimics that
  appearance rather than true T1 contrast (where they would be iso- or hypointense).
* ``stroke``: a hypointense wedge of one hemisphere, from a cortical point towards the deep grey matter (a
  vascular-territory-like sector), with grey and white matter pulled towards CSF intensity.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandAdjustContrast, RandBiasField, RandRicianNoise
from monai.utils import convert_to_numpy
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm.auto import tqdm

from datamodules.nifti import NiftiDataModule
from datamodules.slice_cache import SliceCache

__all__ = [
    "GENERATOR_VERSION",
    "HEALTHY",
    "LESION_KINDS",
    "SyntheticBrainDataModule",
    "SyntheticBrainSpec",
    "dataset_dir_name",
    "generate_synthetic_brain",
    "split_csv_paths",
]

GENERATOR_VERSION = "1.0"
LESION_KINDS: tuple[str, ...] = ("tumor", "ms", "stroke")
HEALTHY = "healthy"
CSV_COLUMNS = ("subject", "image", "mask", "roi")

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Channels of the template stack that is warped for every subject.
_T1, _GM, _WM, _BRAIN, _DEPTH, _VENT = range(6)
_STREAMS = {"anatomy": 0, "lesion": 1, "scanner": 2, "plan": 3}
_VENTRICLE_MIN_DEPTH_MM = 15.0
# Rough deep grey matter / insula point of each hemisphere (MNI mm, x sign added per hemisphere): stroke apex target.
_STROKE_HUB_MNI = np.array([25.0, -12.0, 10.0])


@dataclass(frozen=True)
class SyntheticBrainSpec:
    """Everything that defines a synthetic dataset; equal specs give byte-identical volumes."""

    seed: int = 0
    n_train: int = 16
    n_val: int = 4
    n_test_healthy: int = 4
    n_test_per_lesion: int = 4
    n_unlabelled: int = 6
    lesion_kinds: tuple[str, ...] = LESION_KINDS
    resolution_mm: float = 2.0
    # anatomy variability
    elastic_std_mm: float = 2.5  # std of each displacement component
    elastic_corr_mm: float = 24.0  # correlation length of the displacement field
    rotation_deg: float = 4.0  # max rotation about each axis
    scale_frac: float = 0.05  # max relative scaling per axis
    translation_mm: float = 6.0  # max translation per axis
    tissue_contrast_jitter: float = 0.03  # std of per-subject GM / WM intensity scaling
    # scanner effects
    gamma_range: tuple[float, float] = (0.85, 1.2)
    bias_coeff_max: float = 0.08  # Legendre coefficients drawn from [-max, max]
    noise_std_range: tuple[float, float] = (0.005, 0.025)
    # lesions
    tumor_volume_cm3: tuple[float, float] = (5.0, 60.0)  # nominal volume incl. oedema, log-uniform
    tumor_mass_effect: float = 0.25  # max local expansion factor (< 0.5)
    ms_count: tuple[int, int] = (3, 12)
    ms_diameter_mm: tuple[float, float] = (3.0, 15.0)  # long-axis diameter, log-uniform
    ms_periventricular_prob: float = 0.5
    stroke_depth_mm: tuple[float, float] = (12.0, 55.0)  # cortex-to-apex distance of the wedge, log-uniform
    stroke_angle_deg: tuple[float, float] = (15.0, 40.0)  # half opening angle of the wedge
    unlabelled_healthy_fraction: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "lesion_kinds", tuple(self.lesion_kinds))
        unknown = set(self.lesion_kinds) - set(LESION_KINDS)
        if unknown or len(set(self.lesion_kinds)) != len(self.lesion_kinds):
            raise ValueError(f"lesion_kinds must be distinct values of {LESION_KINDS}, got {self.lesion_kinds}")
        counts = (self.n_train, self.n_val, self.n_test_healthy, self.n_test_per_lesion, self.n_unlabelled)
        if self.seed < 0 or min(counts) < 0:
            raise ValueError("seed and subject counts must be non-negative")
        if self.resolution_mm < 1.0:
            raise ValueError("resolution_mm must be >= 1 (the template is 1 mm)")
        if not 0.0 <= self.tumor_mass_effect < 0.5:
            raise ValueError("tumor_mass_effect must be in [0, 0.5)")
        if not 0.0 <= self.unlabelled_healthy_fraction <= 1.0:
            raise ValueError("unlabelled_healthy_fraction must be in [0, 1]")


# ----------------------------------------------------------------------------------------------------------- template
@dataclass(frozen=True)
class _Template:
    """Template channels at the target resolution (see the ``_T1``... indices) and their NIfTI affine."""

    channels: torch.Tensor  # (6, X, Y, Z) float32
    affine: np.ndarray
    spacing: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.channels.shape[1:])

    @property
    def half_extent_mm(self) -> np.ndarray:
        return (np.array(self.shape) - 1) / 2 * self.spacing

    def grid_to_mni(self, grid: np.ndarray) -> np.ndarray:
        """grid_sample coordinates (normalised, (z, y, x) order, ..., 3) -> MNI world coordinates (..., 3)."""
        index = (grid[..., ::-1] + 1.0) / 2.0 * (np.array(self.shape) - 1)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]


def _template_dir() -> Path:
    """nilearn's bundled data folder, found without importing nilearn (which is slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("nilearn is required for the MNI152 template")
    return Path(spec.origin).parent / "datasets" / "data"


def _load_1mm() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The bundled 1 mm MNI152 2009 T1 / GM / WM maps scaled to [0, 1], and their affine."""
    volumes, affine = {}, None
    for name, filename in _TEMPLATE_FILES.items():
        img = nib.load(_template_dir() / filename)
        volumes[name] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        affine = img.affine
    return volumes, np.asarray(affine, dtype=np.float64)


def _downsample(stack: torch.Tensor, affine: np.ndarray, res: float) -> tuple[torch.Tensor, np.ndarray]:
    """Resample 1 mm channels to ``res`` mm: box average for integer factors, blur + linear otherwise."""
    factor = round(res)
    if abs(factor - res) < 1e-6:
        pooled = F.avg_pool3d(stack[None], kernel_size=factor, stride=factor)[0]
        offset = (factor - 1) / 2
    else:
        out_shape = tuple(int((n - 1) // res) + 1 for n in stack.shape[1:])
        pooled = torch.from_numpy(
            np.stack(
                [
                    ndimage.affine_transform(
                        ndimage.gaussian_filter(ch.numpy(), 0.42 * res), [res] * 3, order=1, output_shape=out_shape
                    )
                    for ch in stack
                ]
            )
        )
        offset = 0.0
    scale = np.diag([res, res, res, 1.0])
    scale[:3, 3] = offset
    return pooled.contiguous(), affine @ scale


@functools.lru_cache(maxsize=4)
def _load_template(res: float) -> _Template:
    """Template at ``res`` mm with brain mask, depth (distance to outside, mm) and distance to the ventricles (mm)."""
    vols, affine = _load_1mm()
    brain = (vols["t1"] > 0.2).astype(np.float32)  # nilearn's brain mask definition
    stack = torch.from_numpy(np.stack([vols["t1"], vols["gm"], vols["wm"], brain]))
    stack, affine = _downsample(stack, affine, res)
    brain_lr = ndimage.binary_fill_holes(stack[3].numpy() >= 0.5)
    stack[3] = torch.maximum(stack[3], torch.from_numpy(brain_lr.astype(np.float32)))
    depth = ndimage.distance_transform_edt(brain_lr) * res
    csf = np.clip(stack[3].numpy() - stack[1].numpy() - stack[2].numpy(), 0.0, 1.0)
    ventricles = (csf > 0.5) & (depth > _VENTRICLE_MIN_DEPTH_MM)
    vent_dist = ndimage.distance_transform_edt(~ventricles) * res
    extra = torch.from_numpy(np.stack([depth, vent_dist]).astype(np.float32))
    return _Template(torch.cat([stack, extra]).contiguous(), affine, float(res))


@functools.lru_cache(maxsize=4)
def _voxel_coords(shape: tuple[int, int, int], res: float) -> torch.Tensor:
    """(X, Y, Z, 3) voxel centre coordinates in mm relative to the volume centre."""
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * res for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _to_grid(coords_mm: torch.Tensor, half_extent_mm: np.ndarray) -> torch.Tensor:
    """mm coordinates -> grid_sample's normalised (z, y, x) order with a batch axis."""
    half = torch.as_tensor(half_extent_mm, dtype=torch.float32)
    return (coords_mm / half).flip(-1)[None]


# -------------------------------------------------------------------------------------------------------- randomness
def _rng(seed: int, subject: str, stream: str) -> np.random.Generator:
    """Independent generator per (seed, subject id, purpose)."""
    key = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key, _STREAMS[stream]]))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """Sample log-uniformly between ``bounds``."""
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], res: float, corr_mm: float, channels: int = 1
) -> np.ndarray:
    """Zero-mean unit-std smooth random field(s) of shape (channels, *shape) with correlation length ~corr_mm."""
    step = corr_mm / 2
    coarse = [math.ceil((n - 1) * res / step) + 3 for n in shape]
    field = ndimage.gaussian_filter(rng.standard_normal((channels, *coarse)), sigma=(0, 1, 1, 1), mode="nearest")
    field = (field - field.mean(axis=(1, 2, 3), keepdims=True)) / field.std(axis=(1, 2, 3), keepdims=True)
    up = F.interpolate(
        torch.from_numpy(field.astype(np.float32))[None], size=shape, mode="trilinear", align_corners=True
    )
    return up[0].numpy()


# ------------------------------------------------------------------------------------------------------ deformation
@dataclass(frozen=True)
class _Deformation:
    """Subject -> template mapping as grid_sample coordinates on a coarse grid of nodes spanning the volume.

    The mapping is ``x @ matrix.T + translation + displacement(x)`` (centred mm); being affine plus a coarse field,
    trilinear interpolation of the node values is exact for the affine part."""

    nodes: torch.Tensor  # (1, 3, cx, cy, cz) normalised template coordinates in grid_sample (z, y, x) order


def _random_deformation(rng: np.random.Generator, spec: SyntheticBrainSpec, tpl: _Template) -> _Deformation:
    """Small random rotation / scaling / translation plus a smooth random displacement field."""
    angles = rng.uniform(-spec.rotation_deg, spec.rotation_deg, 3)
    scales = 1.0 + rng.uniform(-spec.scale_frac, spec.scale_frac, 3)
    matrix = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(1.0 / scales)
    translation = rng.uniform(-spec.translation_mm, spec.translation_mm, 3)
    half = tpl.half_extent_mm
    coarse = [math.ceil(2 * h / (spec.elastic_corr_mm / 2)) + 3 for h in half]
    field = ndimage.gaussian_filter(rng.standard_normal((3, *coarse)), sigma=(0, 1, 1, 1), mode="nearest")
    field = field / field.std(axis=(1, 2, 3), keepdims=True) * spec.elastic_std_mm
    axes = [np.linspace(-h, h, n) for h, n in zip(half, coarse, strict=True)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    template_mm = points @ matrix.T + translation + np.moveaxis(field, 0, -1)
    nodes = np.moveaxis((template_mm / half)[..., ::-1], -1, 0)
    return _Deformation(torch.from_numpy(np.ascontiguousarray(nodes, dtype=np.float32))[None])


def _sampling_grid(deform: _Deformation, tpl: _Template, coords_mm: torch.Tensor | None = None) -> torch.Tensor:
    """grid_sample grid (1, X, Y, Z, 3) into the template for subject points ``coords_mm`` (None: voxel centres)."""
    if coords_mm is None:
        dense = F.interpolate(deform.nodes, size=tpl.shape, mode="trilinear", align_corners=True)
    else:
        grid = _to_grid(coords_mm, tpl.half_extent_mm)
        dense = F.grid_sample(deform.nodes, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return dense.permute(0, 2, 3, 4, 1).contiguous()


def _mass_effect(coords_mm: torch.Tensor, centre_mm: np.ndarray, radius_mm: float, strength: float) -> torch.Tensor:
    """Pull-back coordinates of a radial expansion around ``centre_mm`` (tissue pushed away from the centre)."""
    centre = torch.as_tensor(centre_mm, dtype=torch.float32)
    offset = coords_mm - centre
    sigma = 1.5 * radius_mm
    shrink = 1.0 - strength * torch.exp(-(offset**2).sum(-1, keepdim=True) / (2 * sigma**2))
    return centre + offset * shrink


# --------------------------------------------------------------------------------------------------------- anatomy
@dataclass
class _Anatomy:
    """A subject's deformed anatomy, before lesions and scanner effects."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray  # bool
    depth: np.ndarray | None  # mm to the outside of the brain (None when not warped)
    vent: np.ndarray | None  # mm to the nearest ventricle (None when not warped)
    grid: np.ndarray  # (X, Y, Z, 3) grid_sample coordinates of each voxel in the template
    res: float

    @property
    def csf(self) -> np.ndarray:
        return np.clip(self.brain - self.gm - self.wm, 0.0, 1.0)

    def reference(self, tissue: str) -> float:
        """Median T1 intensity of nearly pure WM, GM or CSF voxels."""
        prob = {"wm": self.wm, "gm": self.gm, "csf": self.csf}[tissue]
        return float(np.median(self.t1[(prob > 0.8) & self.brain]))


def _build_anatomy(
    tpl: _Template, deform: _Deformation, coords_mm: torch.Tensor | None, jitter: np.ndarray, aux: bool
) -> _Anatomy:
    """Warp the template to subject points ``coords_mm`` (None: voxel centres) and scale GM / WM intensities.

    ``aux`` also warps the depth and ventricle-distance maps (only lesion placement needs them)."""
    grid = _sampling_grid(deform, tpl, coords_mm)
    channels = tpl.channels if aux else tpl.channels[: _BRAIN + 1]
    warped = F.grid_sample(channels[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    ch = warped[0].numpy()
    brain = ch[_BRAIN] >= 0.5
    gm, wm = ch[_GM] * brain, ch[_WM] * brain
    t1 = ch[_T1] * (1.0 + jitter[0] * gm + jitter[1] * wm)
    depth, vent = (ch[_DEPTH], ch[_VENT]) if aux else (None, None)
    return _Anatomy(t1, gm, wm, brain, depth, vent, grid[0].numpy(), tpl.spacing)


# ---------------------------------------------------------------------------------------------------------- lesions
@dataclass
class _Lesion:
    """Per-voxel blending weight (0 outside the lesion) and target intensity."""

    weight: np.ndarray
    target: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> _Lesion:
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def add(self, box: tuple[slice, ...], weight: np.ndarray, target: np.ndarray) -> None:
        """Merge a sub-box lesion; where lesions overlap the stronger weight wins."""
        stronger = weight > self.weight[box]
        self.weight[box] = np.where(stronger, weight, self.weight[box])
        self.target[box] = np.where(stronger, target, self.target[box])


def _paint(healthy: np.ndarray, lesion: _Lesion) -> tuple[np.ndarray, np.ndarray]:
    """Blend the lesion into the image only inside its mask; returns (lesioned image, uint8 mask)."""
    mask = lesion.weight > 0
    blended = healthy + lesion.weight * (lesion.target - healthy)
    return np.where(mask, blended, healthy).astype(np.float32), mask.astype(np.uint8)


def _box(centre_vox: np.ndarray, half_vox: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of a cube of half-width ``half_vox`` (+1 voxel margin) around a voxel, clipped to the volume."""
    half = math.ceil(half_vox) + 1
    return tuple(
        slice(max(int(c) - half, 0), min(int(c) + half + 1, n)) for c, n in zip(centre_vox, shape, strict=True)
    )


def _component_at(region: np.ndarray, seed: tuple[int, ...] | None = None) -> np.ndarray:
    """The connected component of ``region`` containing ``seed`` (the largest one when None or outside)."""
    labels, n = ndimage.label(region)
    if n <= 1:
        return region
    if seed is not None and labels[seed] > 0:
        return labels == labels[seed]
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(sizes.argmax()) + 1


def _pick_voxel(rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray:
    """Index (3,) of a uniformly chosen True voxel."""
    flat = np.flatnonzero(candidates)
    return np.array(np.unravel_index(flat[rng.integers(len(flat))], candidates.shape))


def _vox_to_mm(vox: np.ndarray, shape: tuple[int, ...], res: float) -> np.ndarray:
    """Voxel index -> mm relative to the volume centre."""
    return (vox - (np.array(shape) - 1) / 2) * res


def _ellipsoid_rho(coords: np.ndarray, centre: np.ndarray, axes: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) of each point of ``coords`` (..., 3)."""
    local = (coords - centre) @ rotation
    return np.sqrt(((local / axes) ** 2).sum(-1))


def _tumor_site(rng: np.random.Generator, anat: _Anatomy, spec: SyntheticBrainSpec) -> tuple[np.ndarray, float]:
    """Centre voxel and equivalent radius (mm) of a tumour deep enough inside the brain parenchyma."""
    volume_mm3 = _log_uniform(rng, spec.tumor_volume_cm3) * 1000.0
    radius = (3 * volume_mm3 / (4 * math.pi)) ** (1 / 3)
    tissue = anat.brain & (anat.gm + anat.wm > 0.5)
    candidates = tissue & (anat.depth >= max(0.8 * radius, 2 * anat.res))
    if not candidates.any():
        candidates = tissue & (anat.depth >= 0.9 * anat.depth[tissue].max())
    return _pick_voxel(rng, candidates), radius


def _tumor_lesion(rng: np.random.Generator, anat: _Anatomy, centre_vox: np.ndarray, radius: float) -> _Lesion:
    """Irregular mass: necrotic core, enhancing rim and oedema (spreading further into WM), all inside the mask."""
    shape, res = anat.t1.shape, anat.res
    wm_spread = rng.uniform(0.1, 0.4)
    axes = radius * np.exp(rng.normal(0.0, 0.15, 3))
    axes *= radius / np.prod(axes) ** (1 / 3) / (1.0 + wm_spread / 2)
    box = _box(centre_vox, 2.0 * axes.max() / res, shape)
    coords = _voxel_coords(shape, res).numpy()[box]
    rho = _ellipsoid_rho(
        coords, _vox_to_mm(centre_vox, shape, res), axes, Rotation.random(random_state=rng).as_matrix()
    )
    noise = np.clip(_smooth_noise(rng, rho.shape, res, 0.45 * radius, channels=3), -1.5, 1.5)
    rho = rho * np.exp(0.2 * noise[0])  # irregular outline
    inner = rho * np.exp(0.15 * noise[1])  # irregular core / rim boundaries
    outer = rho / (1.0 + wm_spread * anat.wm[box])  # oedema reaches further along white matter
    core_end = rng.uniform(0.25, 0.45)
    rim_end = min(core_end + max(rng.uniform(0.15, 0.28), 1.5 * res / radius), 0.85)
    edge = 0.25 * (rim_end - core_end)
    knots = [0.0, core_end - edge, core_end + edge, rim_end - edge, rim_end + edge, 1.0]
    core = anat.reference("csf") * rng.uniform(0.8, 1.1)
    rim = anat.reference("wm") * rng.uniform(1.12, 1.3)
    solid = np.interp(inner, knots, [core, core, rim, rim, 0.0, 0.0])
    oedema_share = np.interp(inner, knots, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    oedema = anat.t1[box] * rng.uniform(0.72, 0.85)  # darkened tissue, structure still faintly visible
    target = (solid + oedema_share * oedema) * (1.0 + 0.05 * noise[2])
    inside = _component_at((outer < 1.0) & anat.brain[box], tuple(np.asarray(centre_vox) - [sl.start for sl in box]))
    weight = np.where(inside, np.clip((1.0 - outer) / 0.15, 0.35, 1.0), 0.0)
    lesion = _Lesion.empty(shape)
    lesion.add(box, weight.astype(np.float32), target.astype(np.float32))
    return lesion


def _ms_orientation(rng: np.random.Generator, anat: _Anatomy, vox: np.ndarray, periventricular: bool) -> np.ndarray:
    """Rotation whose first axis points away from the ventricles (Dawson's fingers) or is random."""
    rotation = Rotation.random(random_state=rng).as_matrix()
    if not periventricular:
        return rotation
    grad = np.array(
        [
            anat.vent[tuple(np.clip(vox + step, 0, np.array(anat.vent.shape) - 1))]
            - anat.vent[tuple(np.clip(vox - step, 0, np.array(anat.vent.shape) - 1))]
            for step in np.eye(3, dtype=int)
        ]
    )
    if np.linalg.norm(grad) < 1e-6:
        return rotation
    first = grad / np.linalg.norm(grad)
    basis, _ = np.linalg.qr(np.column_stack([first, rotation[:, 1], rotation[:, 2]]))
    return basis * np.sign(basis[:, 0] @ first)


def _ms_lesion(rng: np.random.Generator, anat: _Anatomy, spec: SyntheticBrainSpec) -> _Lesion:
    """Several small hyperintense ovoids centred in white matter, partly periventricular."""
    shape, res = anat.t1.shape, anat.res
    wm = anat.brain & (anat.wm > 0.5)
    near_vent = wm & (anat.vent <= 10.0)
    wm_ref = anat.reference("wm")
    lesion = _Lesion.empty(shape)
    for _ in range(int(rng.integers(spec.ms_count[0], spec.ms_count[1] + 1))):
        periventricular = bool(rng.random() < spec.ms_periventricular_prob and near_vent.any())
        vox = _pick_voxel(rng, near_vent if periventricular else wm)
        long_axis = _log_uniform(rng, spec.ms_diameter_mm) / 2
        axes = long_axis * np.array([1.0, rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.8)])
        rotation = _ms_orientation(rng, anat, vox, periventricular)
        box = _box(vox, 1.25 * long_axis / res, shape)
        coords = _voxel_coords(shape, res).numpy()[box]
        rho = _ellipsoid_rho(coords, _vox_to_mm(vox, shape, res), axes, rotation)
        rho = rho * np.exp(0.1 * np.clip(_smooth_noise(rng, rho.shape, res, 4.0)[0], -2, 2))
        inside = (rho < 1.0) & anat.brain[box] & (anat.wm[box] > 0.3)
        weight = np.where(inside, np.clip(1.5 * (1.0 - rho**2), 0.3, 1.0), 0.0)
        target = np.full(rho.shape, wm_ref * rng.uniform(1.25, 1.6))
        lesion.add(box, weight.astype(np.float32), target.astype(np.float32))
    return lesion


def _stroke_lesion(rng: np.random.Generator, anat: _Anatomy, spec: SyntheticBrainSpec, tpl: _Template) -> _Lesion:
    """Hypointense cortical-subcortical wedge of one hemisphere, pointing from a cortical point to the deep GM."""
    shape, res = anat.t1.shape, anat.res
    cortex = anat.brain & (anat.gm > 0.5) & (anat.depth <= 3.0 + res)
    mni = tpl.grid_to_mni(anat.grid[cortex])
    cerebellum = (mni[:, 2] < -25) | ((mni[:, 1] < -40) & (mni[:, 2] < 0))
    cortex[cortex] = ~cerebellum
    vox = _pick_voxel(rng, cortex if cortex.any() else anat.brain & (anat.gm > 0.5))
    surface = tpl.grid_to_mni(anat.grid[tuple(vox)])
    side = 1.0 if surface[0] >= 0 else -1.0
    hub = _STROKE_HUB_MNI * np.array([side, 1.0, 1.0])
    depth = min(_log_uniform(rng, spec.stroke_depth_mm), 1.1 * np.linalg.norm(hub - surface))
    axis = (surface - hub) / np.linalg.norm(surface - hub)
    apex = surface - depth * axis
    half_angle = math.radians(rng.uniform(*spec.stroke_angle_deg))
    box = _box(vox, (1.25 * depth + 15.0) / res, shape)
    points = tpl.grid_to_mni(anat.grid[box]) - apex
    dist = np.linalg.norm(points, axis=-1)
    angle = np.arccos(np.clip(points @ axis / np.maximum(dist, 1e-6), -1.0, 1.0))
    rho = np.maximum(angle / half_angle, dist / (1.25 * depth))
    rho = rho * np.exp(0.15 * np.clip(_smooth_noise(rng, rho.shape, res, 10.0)[0], -2, 2))
    same_side = (points[..., 0] + apex[0]) * side > 0
    inside = _component_at((rho < 1.0) & same_side & anat.brain[box] & (anat.gm[box] + anat.wm[box] > 0.5))
    weight = np.where(inside, rng.uniform(0.65, 1.0) * np.clip((1.0 - rho) / 0.2, 0.3, 1.0), 0.0)
    target = anat.reference("csf") * rng.uniform(0.9, 1.2) * (1.0 + 0.04 * _smooth_noise(rng, rho.shape, res, 6.0)[0])
    lesion = _Lesion.empty(shape)
    lesion.add(box, weight.astype(np.float32), target.astype(np.float32))
    return lesion


def _retry_nonempty(make: Callable[[], tuple[_Anatomy, _Lesion]], attempts: int = 20) -> tuple[_Anatomy, _Lesion]:
    """Call ``make`` until its lesion is non-empty (each call draws new random numbers)."""
    for _ in range(attempts):
        anat, lesion = make()
        if (lesion.weight > 0).any():
            return anat, lesion
    raise RuntimeError(f"could not place a non-empty lesion in {attempts} attempts")


# ---------------------------------------------------------------------------------------------------------- subject
@dataclass
class _Subject:
    """All volumes of one subject; ``healthy`` and ``lesioned`` are before scanner effects, ``image`` after."""

    subject: str
    kind: str
    healthy: np.ndarray
    lesioned: np.ndarray
    image: np.ndarray
    mask: np.ndarray  # uint8
    brain: np.ndarray  # uint8
    gm: np.ndarray
    wm: np.ndarray


def _scanner_effects(image: np.ndarray, rng: np.random.Generator, spec: SyntheticBrainSpec) -> np.ndarray:
    """Gamma / contrast change, smooth multiplicative bias field and Rician noise (MONAI, explicitly seeded)."""
    transforms = [
        RandAdjustContrast(prob=1.0, gamma=spec.gamma_range),
        RandBiasField(prob=1.0, degree=3, coeff_range=(-spec.bias_coeff_max, spec.bias_coeff_max)),
        RandRicianNoise(prob=1.0, std=float(rng.uniform(*spec.noise_std_range)), sample_std=False),
    ]
    out = torch.from_numpy(image[None].copy())
    for transform in transforms:
        transform.set_random_state(seed=int(rng.integers(2**31)))
        out = transform(out)
    return convert_to_numpy(out)[0].astype(np.float32)


def _lesioned_anatomy(
    kind: str,
    rng: np.random.Generator,
    spec: SyntheticBrainSpec,
    tpl: _Template,
    deform: _Deformation,
    anat: _Anatomy,
    jitter: np.ndarray,
) -> tuple[_Anatomy, _Lesion]:
    """Draw a lesion of ``kind``; tumours also return the anatomy displaced by their mass effect."""
    coords = _voxel_coords(tpl.shape, tpl.spacing)

    def tumor() -> tuple[_Anatomy, _Lesion]:
        vox, radius = _tumor_site(rng, anat, spec)
        centre = _vox_to_mm(vox, tpl.shape, tpl.spacing)
        strength = spec.tumor_mass_effect * rng.uniform(0.5, 1.0)
        pushed = _build_anatomy(tpl, deform, _mass_effect(coords, centre, radius, strength), jitter, aux=True)
        return pushed, _tumor_lesion(rng, pushed, vox, radius)

    makers = {
        "tumor": tumor,
        "ms": lambda: (anat, _ms_lesion(rng, anat, spec)),
        "stroke": lambda: (anat, _stroke_lesion(rng, anat, spec, tpl)),
    }
    return _retry_nonempty(makers[kind])


def _make_subject(spec: SyntheticBrainSpec, subject: str, kind: str = HEALTHY) -> _Subject:
    """Generate one subject. The anatomy depends only on (seed, subject), the lesion only adds to it."""
    if kind != HEALTHY and kind not in LESION_KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    tpl = _load_template(float(spec.resolution_mm))
    rng = _rng(spec.seed, subject, "anatomy")
    deform = _random_deformation(rng, spec, tpl)
    jitter = rng.normal(0.0, spec.tissue_contrast_jitter, 2)
    anat = _build_anatomy(tpl, deform, None, jitter, aux=kind != HEALTHY)
    lesion = _Lesion.empty(tpl.shape)
    if kind != HEALTHY:
        anat, lesion = _lesioned_anatomy(kind, _rng(spec.seed, subject, "lesion"), spec, tpl, deform, anat, jitter)
    healthy = anat.t1.astype(np.float32)
    lesioned, mask = _paint(healthy, lesion)
    image = _scanner_effects(lesioned, _rng(spec.seed, subject, "scanner"), spec)
    return _Subject(subject, kind, healthy, lesioned, image, mask, anat.brain.astype(np.uint8), anat.gm, anat.wm)


# -------------------------------------------------------------------------------------------------------- dataset io
@dataclass(frozen=True)
class _Planned:
    """One subject to generate."""

    split: str
    subject: str
    kind: str


def _split_names(spec: SyntheticBrainSpec) -> list[str]:
    """Split names in canonical order."""
    return ["train", "val", "test_healthy", *(f"test_{k}" for k in spec.lesion_kinds), "unlabelled"]


def _unlabelled_kinds(spec: SyntheticBrainSpec) -> list[str]:
    """Shuffled mix of healthy and lesioned kinds for the unlabelled pool."""
    n = spec.n_unlabelled
    n_healthy = n if not spec.lesion_kinds else round(n * spec.unlabelled_healthy_fraction)
    kinds = [HEALTHY] * n_healthy + [spec.lesion_kinds[i % len(spec.lesion_kinds)] for i in range(n - n_healthy)]
    order = _rng(spec.seed, "unlabelled", "plan").permutation(n)
    return [kinds[i] for i in order]


def _plan(spec: SyntheticBrainSpec) -> list[_Planned]:
    """Every subject of the dataset with its split and kind; subject ids are unique."""
    groups = [("train", "train", [HEALTHY] * spec.n_train), ("val", "val", [HEALTHY] * spec.n_val)]
    groups.append(("test_healthy", "testhealthy", [HEALTHY] * spec.n_test_healthy))
    groups += [(f"test_{k}", f"test{k}", [k] * spec.n_test_per_lesion) for k in spec.lesion_kinds]
    groups.append(("unlabelled", "unlabelled", _unlabelled_kinds(spec)))
    return [_Planned(split, f"sub-{tag}-{i:03d}", kind) for split, tag, kinds in groups for i, kind in enumerate(kinds)]


def _spec_json(spec: SyntheticBrainSpec) -> dict:
    """The spec as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(asdict(spec)))


def dataset_dir_name(spec: SyntheticBrainSpec) -> str:
    """Folder name of the dataset of ``spec``: ``seed{seed}-{hash8}`` (hash covers spec and generator version)."""
    payload = json.dumps({"spec": _spec_json(spec), "version": GENERATOR_VERSION}, sort_keys=True)
    return f"seed{spec.seed}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def _subject_files(subject: str) -> dict[str, str]:
    """Dataset-relative paths of a subject's image, lesion mask and brain mask."""
    return {key: f"{key}/{subject}.nii.gz" for key in ("images", "masks", "brain")}


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a gzipped NIfTI with both qform and sform set to ``affine``."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _write_subject(folder: Path, subj: _Subject, affine: np.ndarray) -> list[str]:
    """Write image, lesion mask and brain mask; returns their dataset-relative paths."""
    files = _subject_files(subj.subject)
    volumes = {"images": subj.image.astype(np.float32), "masks": subj.mask, "brain": subj.brain}
    for key, rel in files.items():
        _save_nifti(folder / rel, volumes[key], affine)
    return list(files.values())


def _write_splits(folder: Path, plan: list[_Planned], spec: SyntheticBrainSpec) -> list[str]:
    """One CSV per split with paths relative to the CSV's own folder."""
    written = []
    for split in _split_names(spec):
        rel = f"splits/{split}.csv"
        with open(folder / rel, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for item in (p for p in plan if p.split == split):
                files = _subject_files(item.subject)
                writer.writerow([item.subject, *(f"../{files[k]}" for k in ("images", "masks", "brain"))])
        written.append(rel)
    return written


def _write_manifest(folder: Path, spec: SyntheticBrainSpec, plan: list[_Planned], files: list[str]) -> None:
    """Completion marker, written atomically."""
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "spec": _spec_json(spec),
        "splits": _split_names(spec),
        "subjects": [asdict(p) for p in plan],
        "files": sorted(files),
    }
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / "manifest.json")


def _is_complete(folder: Path, spec: SyntheticBrainSpec) -> bool:
    """True when ``folder`` holds a finished dataset of exactly ``spec``."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION or manifest.get("spec") != _spec_json(spec):
        return False
    return all((folder / rel).is_file() for rel in manifest.get("files", []))


def _write_dataset(folder: Path, spec: SyntheticBrainSpec, progress: bool) -> None:
    """Generate all subjects into ``folder``; compression of one subject overlaps generation of the next."""
    plan = _plan(spec)
    for sub in ("images", "masks", "brain", "splits"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    affine = _load_template(float(spec.resolution_mm)).affine
    files: list[str] = []
    pending: Future[list[str]] | None = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for item in tqdm(plan, desc="synthetic brain", unit="subject", disable=not progress):
            subject = _make_subject(spec, item.subject, item.kind)
            if pending is not None:
                files += pending.result()
            pending = writer.submit(_write_subject, folder, subject, affine)
        if pending is not None:
            files += pending.result()
    files += _write_splits(folder, plan, spec)
    _write_manifest(folder, spec, plan, files)


def _publish(tmp: Path, target: Path, spec: SyntheticBrainSpec) -> None:
    """Move the finished temp folder into place, replacing an incomplete one."""
    if target.exists() and not _is_complete(target, spec):
        shutil.rmtree(target)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target, spec):  # lost a race only if the winner is complete
            raise


def generate_synthetic_brain(
    root: str | Path, spec: SyntheticBrainSpec = SyntheticBrainSpec(), progress: bool = True
) -> Path:
    """Write the dataset into a folder under root named from the spec (e.g. root / f"seed{seed}-{hash8}") and return
    that folder. Skips all work when the folder is already complete (manifest present, same spec, all files exist)."""
    root = Path(root)
    target = root / dataset_dir_name(spec)
    if _is_complete(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        _write_dataset(tmp, spec, progress)
        _publish(tmp, target, spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def split_csv_paths(dataset_dir: str | Path) -> dict[str, Path]:
    """Split name -> CSV path of a generated dataset, in canonical order (train, val, test_*, unlabelled)."""
    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{dataset_dir} is not a complete synthetic brain dataset (no manifest.json)")
    splits = json.loads(manifest_path.read_text())["splits"]
    return {name: dataset_dir / "splits" / f"{name}.csv" for name in splits}


class SyntheticBrainDataModule(NiftiDataModule):
    """The embedded default dataset: generated once (``generate_synthetic_brain``), then read through the NIfTI
    pipeline exactly like a user's own data.

    Test sets: ``healthy`` and one per lesion kind; the ``unlabelled`` pool mixes healthy and lesioned subjects.
    ``data_root`` defaults to ``$NORMBENCH_DATA_DIR/synthetic_brain`` or ``data/synthetic_brain``; slice caches go
    to ``<data_root>/.slice_cache`` unless ``cache_dir`` is given. Preprocessing arguments as ``NiftiDataModule``.
    """

    def __init__(
        self,
        data_root: str | None = None,
        seed: int = 0,
        n_train: int = 16,
        n_val: int = 4,
        n_test_healthy: int = 4,
        n_test_per_lesion: int = 4,
        n_unlabelled: int = 6,
        lesion_kinds: tuple[str, ...] = LESION_KINDS,
        resolution_mm: float = 2.0,
        cache_dir: str | None = None,
        image_size: int = 64,
        intensity_percentiles: tuple[float, float] = (1.0, 99.0),
        zero_outside_roi: bool = True,
        crop_to_roi: bool = True,
        slice_range: tuple[float, float] | None = (0.15, 0.85),
        min_roi_fraction: float = 0.1,
        min_lesion_pixels: int = 10,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        self.spec = SyntheticBrainSpec(seed=seed, n_train=n_train, n_val=n_val, n_test_healthy=n_test_healthy,
                                       n_test_per_lesion=n_test_per_lesion, n_unlabelled=n_unlabelled,
                                       lesion_kinds=tuple(lesion_kinds), resolution_mm=resolution_mm)
        default_root = Path(os.environ.get("NORMBENCH_DATA_DIR", "data")) / "synthetic_brain"
        self.data_root = Path(data_root) if data_root else default_root
        folder = self.data_root / dataset_dir_name(self.spec)
        csvs = {name: folder / "splits" / f"{name}.csv" for name in _split_names(self.spec)}  # written by generate()
        tests = {name.removeprefix("test_"): str(path) for name, path in csvs.items() if name.startswith("test_")}
        super().__init__(
            train_csv=str(csvs["train"]),
            val_csv=str(csvs["val"]),
            test_csvs=tests,
            unlabelled_csv=str(csvs["unlabelled"]) if self.spec.n_unlabelled else None,
            cache_dir=cache_dir or str(self.data_root / ".slice_cache"),
            image_size=image_size,
            intensity_percentiles=intensity_percentiles,
            zero_outside_roi=zero_outside_roi,
            crop_to_roi=crop_to_roi,
            slice_range=slice_range,
            min_roi_fraction=min_roi_fraction,
            min_lesion_pixels=min_lesion_pixels,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            progress=progress,
        )

    def generate(self) -> Path:
        """Generate the volumes and split CSVs (no-op when the folder is complete)."""
        return generate_synthetic_brain(self.data_root, self.spec, progress=self.progress)

    def caches(self) -> dict[str, SliceCache]:
        self.generate()
        return super().caches()
