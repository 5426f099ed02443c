"""Normative-representation indices after Bercea et al. (Nature Communications 2025, "Evaluating normative
representation learning in generative AI for robust anomaly detection in brain imaging").

The paper's code logs only the ingredients (MAE, SSIM, LPIPS, Frechet distances); the index formulas below are
documented readings, tagged [UNVERIFIED] reading "bercea_v1" where they follow the paper's text:

* RQI (restoration quality on healthy images), reading "bercea_v1" [UNVERIFIED]: per image
  ``1 - LPIPS(x, x_hat) / LPIPS(x, 0)``, clipped to [0, 1], averaged over images. Offline reading "mae" (no LPIPS):
  per image ``1 - MAE(x, x_hat) / MAE(x, 0)`` with ``MAE(x, 0) = mean|x|``, clipped to [0, 1], averaged.
* AHI (anomaly-to-healthy), reading "bercea_v1" [UNVERIFIED]:
  ``clip((FD(P;N) - FD(RP;N)) / (FD(P;N) - FD(UN;N)), 0, 1)``; undefined (NaN and a reason) when the denominator
  is not positive.
* CACI (conservation and correction): *our* reading, the paper's combination of its components is [UNVERIFIED]:
  ``MSE_an / (MSE_an + MSE_h)`` from set-level pooled means (0 when both are 0). An identity reconstruction gives 0
  (nothing corrected), one that keeps healthy tissue and changes the lesion gives 1.
* Composite [UNVERIFIED]: ``H = harmonic_mean(RQI, CACI)`` (0 if either is 0), ``Comp = (H + AHI) / 2``.

SSIM follows ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)``: separable Gaussian window (sigma 1.5, truncate 3.5, i.e. 11 taps), ``scipy.ndimage`` border mode
'reflect' (half-sample symmetric: ``d c b a | a b c d | d c b a``), K1 0.01, K2 0.03; the image-level mean leaves
out a border of ``(11 - 1) // 2 = 5`` pixels, as scikit-image's ``crop`` does. Multi-channel maps are averaged over
channels (scikit-image's ``channel_axis``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from benchmark.metrics.generative import BORDER, SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW

READING_BERCEA = "bercea_v1"
READING_MAE = "mae"


# ---------------------------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------------------------


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _reflect_index(index: Tensor, size: int) -> Tensor:
    """scipy.ndimage 'reflect' (half-sample symmetric) index into ``range(size)``, any overshoot."""
    period = index.remainder(2 * size)
    return torch.where(period >= size, 2 * size - 1 - period, period)


def _filter_matrix(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[size, size] matrix applying the 11-tap SSIM Gaussian with 'reflect' borders along one axis: ``F @ x``."""
    taps = torch.arange(SSIM_WINDOW, dtype=torch.long, device=device) - BORDER
    kernel = torch.exp(-(taps.to(dtype) ** 2) / (2 * SSIM_SIGMA**2))
    kernel = kernel / kernel.sum()
    rows = torch.arange(size, device=device)[:, None].expand(size, SSIM_WINDOW)
    columns = _reflect_index(rows + taps[None], size)
    matrix = torch.zeros(size, size, dtype=dtype, device=device)
    matrix.index_put_((rows.reshape(-1), columns.reshape(-1)), kernel.repeat(size), accumulate=True)
    return matrix


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4 or x.shape != y.shape or x.numel() == 0:
        raise ValueError(f"need two non-empty [B,C,H,W] batches of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {tuple(x.shape)}")


def ssim_map(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Full-size SSIM map [B,1,H,W] of two [B,C,H,W] batches (mean over channels), scikit-image's conventions.

    Computed in float64 (float32 on MPS) on the inputs' device; returned in that working dtype.
    """
    _check_images(x, y)
    dtype = _work_dtype(x.device)
    x, y = x.to(dtype), y.to(x.device, dtype)
    rows = _filter_matrix(x.shape[-2], dtype, x.device)
    columns = _filter_matrix(x.shape[-1], dtype, x.device)

    def smooth(image: Tensor) -> Tensor:
        return rows @ image @ columns.T

    mean_x, mean_y = smooth(x), smooth(y)
    var_x = smooth(x * x) - mean_x**2
    var_y = smooth(y * y) - mean_y**2
    cov = smooth(x * y) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(dim=1, keepdim=True)


def _cropped_mean(maps: Tensor) -> Tensor:
    """Per-image mean [B] of [B,1,H,W] maps without the 5-pixel border (scikit-image's mssim)."""
    return maps[..., BORDER:-BORDER, BORDER:-BORDER].mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------------------
# Per-image ingredients
# ---------------------------------------------------------------------------------------------------------------


def restoration_terms(image: Tensor, reconstruction: Tensor) -> dict[str, Tensor]:
    """Per healthy image [B] (float64 where available): ``mae`` = mean|x_hat - x|, ``mae_blank`` = mean|x|
    (MAE against an all-zero image) and ``ssim`` (scikit-image's mssim, border-cropped mean of :func:`ssim_map`)."""
    _check_images(image, reconstruction)
    dtype = _work_dtype(image.device)
    x, x_hat = image.to(dtype), reconstruction.to(image.device, dtype)
    return {
        "mae": (x_hat - x).abs().mean(dim=(1, 2, 3)),
        "mae_blank": x.abs().mean(dim=(1, 2, 3)),
        "ssim": _cropped_mean(ssim_map(x, x_hat)),
    }


def _check_mask(mask: Tensor, reference: Tensor, name: str) -> Tensor:
    """A [B,1,H,W] {0,1} mask matching ``reference``'s batch and size, in the working dtype."""
    expected = (reference.shape[0], 1, *reference.shape[-2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"{name} must be {expected}, got {tuple(mask.shape)}")
    mask = mask.to(reference.device, reference.dtype)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1")
    return mask


def conservation_terms(
    image: Tensor,
    reconstruction: Tensor,
    lesion: Tensor,
    healthy: Tensor,
    lpips_map: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per pathological image [B] sums for set-level pooling inside the lesion and healthy-tissue masks.

    ``sq_err_*``: sum of the channel-mean squared error ``(x_hat - x)^2``; ``n_*``: pixel counts; ``ssim_*``: sums of
    the full-size :func:`ssim_map`; ``lpips_*``: sums of a spatial LPIPS map [B,1,H,W] when given. ``healthy`` should
    be the brain (roi) minus the lesion; the two masks must not overlap.
    """
    _check_images(image, reconstruction)
    dtype = _work_dtype(image.device)
    x, x_hat = image.to(dtype), reconstruction.to(image.device, dtype)
    lesion, healthy = _check_mask(lesion, x, "lesion"), _check_mask(healthy, x, "healthy")
    if bool((lesion * healthy).any()):
        raise ValueError("lesion and healthy masks overlap (healthy should be roi minus lesion)")
    maps = {"sq_err": ((x_hat - x) ** 2).mean(dim=1, keepdim=True), "ssim": ssim_map(x, x_hat)}
    if lpips_map is not None:
        if tuple(lpips_map.shape) != tuple(lesion.shape):
            raise ValueError(f"lpips_map must be {tuple(lesion.shape)}, got {tuple(lpips_map.shape)}")
        maps["lpips"] = lpips_map.to(x.device, dtype)
    terms = {"n_lesion": lesion.sum(dim=(1, 2, 3)), "n_healthy": healthy.sum(dim=(1, 2, 3))}
    for name, values in maps.items():
        terms[f"{name}_lesion"] = (values * lesion).sum(dim=(1, 2, 3))
        terms[f"{name}_healthy"] = (values * healthy).sum(dim=(1, 2, 3))
    return terms


def pool_conservation(terms: dict[str, Tensor]) -> dict[str, float]:
    """Set-level pooled means from (concatenated) :func:`conservation_terms`: ``mse_lesion``, ``mse_healthy``,
    ``ssim_lesion``, ``ssim_healthy`` (and ``lpips_*``); NaN where a mask is empty over the whole set."""
    pooled = {}
    for region in ("lesion", "healthy"):
        count = float(terms[f"n_{region}"].sum())
        for name, key in (("mse", "sq_err"), ("ssim", "ssim"), ("lpips", "lpips")):
            if f"{key}_{region}" in terms:
                total = float(terms[f"{key}_{region}"].sum())
                pooled[f"{name}_{region}"] = total / count if count > 0 else math.nan
    return pooled


# ---------------------------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------------------------


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix; tiny negative eigenvalues -> 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance of two Gaussians, ``||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` in float64.

    ``tr (C1 C2)^(1/2)`` is taken as ``tr sqrt(S1 C2 S1)`` with ``S1 = C1^(1/2)`` (same eigenvalues, but symmetric,
    so ``eigh`` applies); a tiny negative result from rounding is returned as 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or cov1.shape != (dim, dim) or cov2.shape != (dim, dim):
        raise ValueError(f"shape mismatch: {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, cov1, cov2)):
        raise ValueError("means and covariances must be finite")
    sqrt1 = _psd_sqrt(cov1)
    middle = sqrt1 @ cov2 @ sqrt1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    distance = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)
    return max(distance, 0.0)


def _moments(features: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{name} must be [N, D] features with N >= 2, got {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (unbiased covariances)."""
    mu_a, cov_a = _moments(a, "a")
    mu_b, cov_b = _moments(b, "b")
    return gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b)


# ---------------------------------------------------------------------------------------------------------------
# Indices
# ---------------------------------------------------------------------------------------------------------------


def _ratio_index(errors: Sequence[float], references: Sequence[float]) -> tuple[float, str | None]:
    """Mean over images of ``clip(1 - error / reference, 0, 1)``; images with a zero reference are left out."""
    errors, references = np.asarray(errors, np.float64).ravel(), np.asarray(references, np.float64).ravel()
    if errors.shape != references.shape:
        raise ValueError(f"{errors.shape[0]} errors but {references.shape[0]} references")
    if np.any(errors < 0) or np.any(references < 0):
        raise ValueError("errors and references must be non-negative")
    usable = np.isfinite(errors) & np.isfinite(references) & (references > 0)
    if not usable.any():
        return math.nan, "no image with a finite, positive reference distance"
    values = np.clip(1.0 - errors[usable] / references[usable], 0.0, 1.0)
    left_out = int((~usable).sum())
    note = f"{left_out} image(s) without a finite, positive reference distance left out" if left_out else None
    return float(values.mean()), note


def rqi_index(
    mae: Sequence[float],
    mae_blank: Sequence[float],
    lpips_rec: Sequence[float] | None = None,
    lpips_blank: Sequence[float] | None = None,
) -> tuple[float, str, str | None]:
    """Restoration quality index on healthy images: ``(value, reading, note)``.

    Reading "bercea_v1" [UNVERIFIED] when both LPIPS arrays are given (``1 - LPIPS(x, x_hat) / LPIPS(x, 0)``), else
    the offline reading "mae" (``1 - MAE(x, x_hat) / mean|x|``); per image, clipped to [0, 1], then averaged.
    """
    if (lpips_rec is None) != (lpips_blank is None):
        raise ValueError("give both lpips_rec and lpips_blank, or neither")
    if lpips_rec is not None:
        value, note = _ratio_index(lpips_rec, lpips_blank)
        return value, READING_BERCEA, note
    value, note = _ratio_index(mae, mae_blank)
    return value, READING_MAE, note


def caci_index(mse_lesion: float, mse_healthy: float) -> tuple[float, str | None]:
    """Conservation-and-correction index (our reading; the paper's combination is [UNVERIFIED]):
    ``MSE_an / (MSE_an + MSE_h)`` from set-level pooled means; 0 when both are 0; NaN (with a note) when undefined."""
    if not (math.isfinite(mse_lesion) and math.isfinite(mse_healthy)):
        return math.nan, "MSE inside the lesion or healthy tissue undefined (empty mask?)"
    if mse_lesion < 0 or mse_healthy < 0:
        raise ValueError("MSEs must be non-negative")
    total = mse_lesion + mse_healthy
    if total == 0:
        return 0.0, "reconstruction equals the input everywhere: nothing corrected"
    return mse_lesion / total, None


def ahi_index(fd_pathological: float, fd_restored: float, fd_unseen_healthy: float) -> tuple[float, str | None]:
    """Anomaly-to-healthy index [UNVERIFIED] reading "bercea_v1":
    ``clip((FD(P;N) - FD(RP;N)) / (FD(P;N) - FD(UN;N)), 0, 1)``; NaN and a reason when undefined."""
    values = (fd_pathological, fd_restored, fd_unseen_healthy)
    if not all(math.isfinite(v) for v in values):
        return math.nan, "a Frechet distance is not finite"
    denominator = fd_pathological - fd_unseen_healthy
    if denominator <= 0:
        return math.nan, (f"FD(P;N) - FD(UN;N) = {denominator:.6g} <= 0: pathological features are not farther from "
                          "the healthy training set than unseen healthy ones")
    raw = (fd_pathological - fd_restored) / denominator
    value = min(max(raw, 0.0), 1.0)
    return value, (f"clipped from {raw:.6g}" if value != raw else None)


def composite_index(rqi: float, caci: float, ahi: float) -> dict[str, float]:
    """``harmonic`` = harmonic mean of RQI and CACI (0 if either is 0) and ``composite`` = (harmonic + AHI) / 2;
    a NaN input gives NaN where it enters. [UNVERIFIED] reading "bercea_v1"."""
    if math.isnan(rqi) or math.isnan(caci):
        harmonic = math.nan
    elif rqi == 0 or caci == 0:
        harmonic = 0.0
    else:
        harmonic = 2 * rqi * caci / (rqi + caci)
    return {"harmonic": harmonic, "composite": (harmonic + ahi) / 2}
