"""Normative indices (RQI, CACI, AHI, composite) and lesion-level detection, against independent references:
scikit-image's SSIM, scipy's matrix square root, closed forms, and a direct numpy / scipy.ndimage detection rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from benchmark.metrics.lesions import batch_components, detect_lesions, lesion_components, summarise_detection
from benchmark.metrics.normative import (
    ahi_index,
    caci_index,
    composite_index,
    conservation_terms,
    frechet_distance,
    gaussian_frechet_distance,
    pool_conservation,
    restoration_terms,
    rqi_index,
    ssim_map,
)

SKIMAGE_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0, "full": True}


# ----------------------------------------------------------------------------------------------------------- helpers


def structured(height: int, width: int, seed: int) -> np.ndarray:
    """A [H, W] image in [0, 1] with a gradient, a disc, stripes and a little noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width].astype(np.float64)
    disc = ((rows - height / 2) ** 2 + (cols - width / 3) ** 2 < (min(height, width) / 4) ** 2).astype(float)
    image = 0.3 * cols / width + 0.4 * disc + 0.2 * (np.sin(rows / 2) > 0) + 0.05 * rng.random((height, width))
    return np.clip(image, 0.0, 1.0)


def skimage_ssim(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """scikit-image's mssim and full map (channel mean) of one [C, H, W] pair."""
    if x.shape[0] == 1:
        return structural_similarity(x[0], y[0], **SKIMAGE_SSIM)
    mssim, full = structural_similarity(x, y, channel_axis=0, **SKIMAGE_SSIM)
    return mssim, full.mean(axis=0)


def disc(height: int, width: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width]
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.float64)


def batch(*slices: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(slices)[:, None].astype(np.float64))


# -------------------------------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("kind", ["random", "structured", "multichannel", "smallest"])
def test_ssim_matches_skimage(kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "random":
        x = rng.random((2, 1, 32, 40))
        y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    elif kind == "structured":
        x = np.stack([structured(36, 30, seed) for seed in (1, 2)])[:, None]
        y = np.stack([structured(36, 30, seed)[::-1] for seed in (3, 4)])[:, None]
    elif kind == "multichannel":
        x = rng.random((2, 3, 24, 28))
        y = 0.5 * x + 0.5 * rng.random(x.shape)
    else:
        x, y = rng.random((1, 1, 11, 13)), rng.random((1, 1, 11, 13))
    maps = ssim_map(torch.from_numpy(x), torch.from_numpy(y))
    means = restoration_terms(torch.from_numpy(x), torch.from_numpy(y))["ssim"]
    assert maps.shape == (x.shape[0], 1, *x.shape[-2:])
    for index in range(x.shape[0]):
        mssim, full = skimage_ssim(x[index], y[index])
        np.testing.assert_allclose(maps[index, 0].numpy(), full, atol=1e-5)
        assert abs(float(means[index]) - mssim) < 1e-5
    assert not np.allclose(maps.numpy().mean(axis=(1, 2, 3)), means.numpy(), atol=1e-5)  # the border crop matters


def test_ssim_rejects_small_or_mismatched_images() -> None:
    with pytest.raises(ValueError, match="at least"):
        ssim_map(torch.zeros(1, 1, 10, 20), torch.zeros(1, 1, 10, 20))
    with pytest.raises(ValueError, match="one shape"):
        ssim_map(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 17))


# -------------------------------------------------------------------------------------------- restoration and RQI


def test_restoration_terms_mae_against_numpy() -> None:
    rng = np.random.default_rng(1)
    x, x_hat = rng.random((3, 2, 16, 20)), rng.random((3, 2, 16, 20))
    terms = restoration_terms(torch.from_numpy(x), torch.from_numpy(x_hat))
    np.testing.assert_allclose(terms["mae"].numpy(), np.abs(x_hat - x).mean(axis=(1, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(terms["mae_blank"].numpy(), np.abs(x).mean(axis=(1, 2, 3)), rtol=1e-12)
    assert terms["mae"].dtype == torch.float64


def test_identity_reconstruction() -> None:
    x = batch(structured(32, 32, 5), structured(32, 32, 6))
    lesion = batch(disc(32, 32, (16, 16), 4), disc(32, 32, (10, 20), 3))
    healthy = 1 - lesion
    terms = restoration_terms(x, x.clone())
    np.testing.assert_allclose(terms["mae"].numpy(), 0.0)
    np.testing.assert_allclose(terms["ssim"].numpy(), 1.0, atol=1e-12)
    value, reading, note = rqi_index(terms["mae"].numpy(), terms["mae_blank"].numpy())
    assert (value, reading, note) == (1.0, "mae", None)
    pooled = pool_conservation(conservation_terms(x, x.clone(), lesion, healthy))
    assert pooled["mse_lesion"] == pooled["mse_healthy"] == 0.0
    assert caci_index(pooled["mse_lesion"], pooled["mse_healthy"])[0] == 0.0
    assert abs(pooled["ssim_lesion"] - 1) < 1e-12 and abs(pooled["ssim_healthy"] - 1) < 1e-12


def test_lesion_only_correction() -> None:
    size = 40
    image = structured(size, size, 7)
    lesion = disc(size, size, (20, 22), 5)
    image_lesion = np.clip(image + 0.6 * lesion, 0, 1)
    roi = disc(size, size, (20, 20), 18)
    healthy = roi * (1 - lesion)
    corrected = np.where(lesion > 0, image, image_lesion)  # the healthy image inside the lesion, the input elsewhere
    lpips = np.random.default_rng(8).random((size, size))
    terms = conservation_terms(batch(image_lesion), batch(corrected), batch(lesion), batch(healthy), batch(lpips))
    pooled = pool_conservation(terms)
    assert float(terms["sq_err_healthy"][0]) == 0.0 and pooled["mse_healthy"] == 0.0
    expected_mse = ((corrected - image_lesion) ** 2)[lesion > 0].mean()
    assert pooled["mse_lesion"] == pytest.approx(expected_mse, rel=1e-12) and expected_mse > 0
    assert caci_index(pooled["mse_lesion"], pooled["mse_healthy"]) == (1.0, None)
    _, full = structural_similarity(image_lesion, corrected, **SKIMAGE_SSIM)
    assert float(terms["ssim_healthy"][0]) == pytest.approx(full[healthy > 0].sum(), abs=1e-6)
    assert float(terms["ssim_lesion"][0]) == pytest.approx(full[lesion > 0].sum(), abs=1e-6)
    assert float(terms["lpips_lesion"][0]) == pytest.approx(lpips[lesion > 0].sum(), rel=1e-12)
    assert float(terms["lpips_healthy"][0]) == pytest.approx(lpips[healthy > 0].sum(), rel=1e-12)
    # SSIM is exactly 1 only where the 11 x 11 window does not reach the lesion
    near = ndimage.binary_dilation(lesion > 0, structure=np.ones((11, 11)))
    far = (healthy > 0) & ~near
    maps = ssim_map(batch(image_lesion), batch(corrected))[0, 0].numpy()
    assert far.sum() > 100 and np.abs(maps[far] - 1).max() < 1e-12
    assert pooled["ssim_lesion"] < pooled["ssim_healthy"] < 1.0
    assert maps[(healthy > 0) & near].min() < 1 - 1e-3


def test_conservation_terms_validate_masks() -> None:
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    lesion = torch.zeros(1, 1, 16, 16)
    lesion[..., 4:8, 4:8] = 1
    with pytest.raises(ValueError, match="overlap"):
        conservation_terms(x, x, lesion, torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="0 and 1"):
        conservation_terms(x, x, lesion * 0.5, 1 - lesion)


def test_rqi_readings() -> None:
    value, reading, note = rqi_index([0.1, 0.5, 0.0], [0.2, 0.25, 0.3])  # per image 0.5, clip(-1) = 0, 1
    assert (reading, note) == ("mae", None) and value == pytest.approx(0.5)
    value, reading, _ = rqi_index([0.1], [0.2], lpips_rec=[0.1, 0.3], lpips_blank=[0.4, 0.6])
    assert reading == "bercea_v1" and value == pytest.approx(np.mean([0.75, 0.5]))
    value, _, note = rqi_index([0.1, 0.1], [0.0, 0.4])
    assert value == pytest.approx(0.75) and "1 image" in note
    value, _, note = rqi_index([0.1], [0.0])
    assert math.isnan(value) and note
    with pytest.raises(ValueError, match="both"):
        rqi_index([0.1], [0.2], lpips_rec=[0.1])


def test_caci_edge_cases() -> None:
    assert caci_index(0.3, 0.1)[0] == pytest.approx(0.75)
    value, note = caci_index(math.nan, 0.1)
    assert math.isnan(value) and note
    assert caci_index(0.0, 0.0)[0] == 0.0


# ---------------------------------------------------------------------------------------------------- Frechet / AHI


def scipy_frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    root = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * np.real(root)))


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.standard_normal((dim, dim))
    return factor @ factor.T + 0.1 * np.eye(dim)


def test_gaussian_frechet_closed_forms() -> None:
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    d1, d2 = rng.random(5) + 0.1, rng.random(5) + 0.1
    diagonal = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert gaussian_frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(diagonal, rel=1e-10)
    cov1, cov2 = random_spd(rng, 6), random_spd(rng, 6)
    assert not np.allclose(cov1 @ cov2, cov2 @ cov1)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = scipy_frechet(mu1, cov1, mu2, cov2)
    assert gaussian_frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)
    assert gaussian_frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(expected, rel=1e-8)
    assert gaussian_frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_on_samples() -> None:
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((4, 4))
    a, b = rng.standard_normal((20000, 4)) @ mix, rng.standard_normal((20000, 4)) @ mix
    shifted = rng.standard_normal((20000, 4)) @ mix + 1.0
    same, different = frechet_distance(a, b), frechet_distance(a, shifted)
    assert same < 0.01 and different > 3.5 and same < different / 100
    assert frechet_distance(b, a) == pytest.approx(same, rel=1e-9)
    small_a, small_b = a[:50], shifted[:70]
    expected = scipy_frechet(small_a.mean(0), np.cov(small_a, rowvar=False), small_b.mean(0),
                             np.cov(small_b, rowvar=False))
    assert frechet_distance(small_a, small_b) == pytest.approx(expected, rel=1e-8)
    one_d = frechet_distance(a[:, :1], shifted[:, :1])
    assert one_d == pytest.approx(scipy_frechet(a[:, :1].mean(0), np.atleast_2d(np.var(a[:, 0], ddof=1)),
                                                shifted[:, :1].mean(0),
                                                np.atleast_2d(np.var(shifted[:, 0], ddof=1))), rel=1e-9)
    rank_deficient = frechet_distance(rng.standard_normal((3, 8)), rng.standard_normal((4, 8)))
    assert math.isfinite(rank_deficient) and rank_deficient >= 0


def test_ahi() -> None:
    rng = np.random.default_rng(4)
    train = rng.standard_normal((500, 3))
    unseen = rng.standard_normal((400, 3))
    pathological = rng.standard_normal((400, 3)) * 1.5 + 2.0
    fd_p, fd_un = frechet_distance(pathological, train), frechet_distance(unseen, train)
    assert ahi_index(fd_p, frechet_distance(unseen, train), fd_un) == (1.0, None)
    assert ahi_index(fd_p, frechet_distance(pathological, train), fd_un) == (0.0, None)
    half = (fd_p - (fd_p + fd_un) / 2) / (fd_p - fd_un)
    assert ahi_index(fd_p, (fd_p + fd_un) / 2, fd_un)[0] == pytest.approx(half) == pytest.approx(0.5)
    value, note = ahi_index(10.0, 0.5, 2.0)  # restorations closer to N than unseen healthy ones
    assert value == 1.0 and "clipped" in note
    value, note = ahi_index(10.0, 12.0, 2.0)
    assert value == 0.0 and "clipped" in note
    for fd_unseen in (10.0, 11.0):
        value, note = ahi_index(10.0, 5.0, fd_unseen)
        assert math.isnan(value) and "<= 0" in note


# -------------------------------------------------------------------------------------------------------- composite


def test_composite_index() -> None:
    rqi, caci, ahi = 0.8, 0.3, 0.6
    harmonic = 2 / (1 / rqi + 1 / caci)
    result = composite_index(rqi, caci, ahi)
    assert result["harmonic"] == pytest.approx(harmonic)
    assert result["composite"] == pytest.approx(np.mean([harmonic, ahi]))
    assert composite_index(0.0, 0.7, 0.4) == {"harmonic": 0.0, "composite": 0.2}
    assert composite_index(0.5, 0.0, 0.0) == {"harmonic": 0.0, "composite": 0.0}
    assert all(math.isnan(v) for v in composite_index(math.nan, 0.5, 0.5).values())
    assert all(math.isnan(v) for v in composite_index(0.0, math.nan, 0.5).values())
    nan_ahi = composite_index(0.5, 0.5, math.nan)
    assert nan_ahi["harmonic"] == pytest.approx(0.5) and math.isnan(nan_ahi["composite"])


# ------------------------------------------------------------------------------------------------ lesion detection


def reference_detection(amap: np.ndarray, mask: np.ndarray, roi: np.ndarray, th: float) -> list[dict[str, float]]:
    """The FastMRI+ rule written out directly with scipy.ndimage (8-connectivity) over [B, H, W] arrays."""
    rows = []
    for a, m, r in zip(amap, mask, roi, strict=True):
        labels, count = ndimage.label(m > 0, structure=np.ones((3, 3)))
        thresholded = a * (a >= th)
        neg = thresholded[(r > 0) & (m == 0)].sum()
        for k in range(1, count + 1):
            inside = labels == k
            tp = 1 if 10 * np.count_nonzero(a[inside] >= th) > inside.sum() else 0
            fp = int(np.floor(neg / max(thresholded[inside].sum(), 1)))
            p = tp / max(tp + fp, 1)
            rows.append({"area": inside.sum(), "tp": tp, "fp": fp, "precision": p, "recall": tp,
                         "f1": 2 * p * tp / (p + tp + 1e-8), "fp_mass": neg})
    return rows


def assert_matches_reference(result: dict[str, np.ndarray], reference: list[dict[str, float]]) -> None:
    assert len(result["tp"]) == len(reference)
    for field in ("area", "tp", "fp", "precision", "recall", "f1", "fp_mass"):
        np.testing.assert_allclose(result[field], [row[field] for row in reference], rtol=1e-12, atol=1e-12)


def constructed_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slice 0: lesion A (50 px, 10 flagged at 0.9), lesion B (25 px, 2 flagged at 0.8), 4.2 of mass outside;
    slice 1: one 16 px lesion with 4 px at 0.6 (pos 2.4) and 9.0 of mass outside (FP 3)."""
    amap, mask, roi = np.zeros((2, 32, 32)), np.zeros((2, 32, 32)), np.zeros((2, 32, 32))
    roi[:, 2:30, 2:30] = 1
    mask[0, 5:10, 5:15] = 1
    amap[0, 5, 5:15] = 0.9
    mask[0, 20:25, 20:25] = 1
    amap[0, 20, 20:22] = 0.8
    amap[0, 15, 3:9] = 0.7  # false-positive mass 4.2
    amap[0, 16, 3:20] = 0.3  # below the threshold
    amap[0, 0, :] = 1.0  # outside the roi
    mask[1, 10:14, 10:14] = 1
    amap[1, 10, 10:14] = 0.6
    amap[1, 25, 5:15] = 0.9  # false-positive mass 9.0
    return amap, mask, roi


def test_detection_constructed_case() -> None:
    amap, mask, roi = constructed_case()
    result = detect_lesions(batch(*amap), batch(*mask), batch(*roi), threshold=0.5)
    assert_matches_reference(result, reference_detection(amap, mask, roi, 0.5))
    np.testing.assert_array_equal(result["slice"], [0, 0, 1])
    np.testing.assert_array_equal(result["area"], [50, 25, 16])
    np.testing.assert_array_equal(result["tp"], [1, 0, 1])
    np.testing.assert_array_equal(result["fp"], [0, 2, 3])  # floor(4.2 / 9), floor(4.2 / 1.6), floor(9 / 2.4)
    np.testing.assert_allclose(result["fp_mass"], [4.2, 4.2, 9.0])
    np.testing.assert_allclose(result["precision"], [1.0, 0.0, 0.25])
    np.testing.assert_allclose(result["f1"], [1.0, 0.0, 0.4], atol=1e-7)
    np.testing.assert_allclose(result["flagged_fraction"], [0.2, 0.08, 0.25])
    summary = summarise_detection(result, size_edges=[20, 40])
    assert summary["n_lesions"] == 3 and summary["note"] is None
    assert summary["detection_rate"] == pytest.approx(2 / 3)
    assert summary["precision"] == pytest.approx(1.25 / 3) and summary["recall"] == pytest.approx(2 / 3)
    assert summary["f1"] == pytest.approx(1.4 / 3, abs=1e-7) and summary["fp_mass"] == pytest.approx(17.4 / 3)
    assert [(b["n"], b["detection_rate"]) for b in summary["size_bins"]] == [(1, 1.0), (1, 0.0), (1, 1.0)]


def test_detection_ten_percent_boundary() -> None:
    mask, roi = np.zeros((1, 24, 24)), np.ones((1, 24, 24))
    mask[0, 5:10, 5:15] = 1  # 50 px
    exactly, above = np.zeros_like(mask), np.zeros_like(mask)
    exactly[0, 5, 5:10] = 1.0  # 5 px = 10 %
    above[0, 5, 5:11] = 1.0  # 6 px
    for amap, tp in ((exactly, 0), (above, 1)):
        result = detect_lesions(batch(*amap), batch(*mask), batch(*roi), threshold=0.5)
        assert result["tp"].tolist() == [tp]
        assert_matches_reference(result, reference_detection(amap, mask, roi, 0.5))
    assert detect_lesions(batch(*exactly), batch(*mask), batch(*roi), 0.5, min_fraction=0.09)["tp"].tolist() == [1]
    assert detect_lesions(batch(*exactly), batch(*mask), batch(*roi), 1.0)["tp"].tolist() == [0]  # map >= th


def test_detection_random_against_reference() -> None:
    rng = np.random.default_rng(6)
    amap = ndimage.gaussian_filter(rng.random((4, 40, 40)), sigma=(0, 2, 2)) * 3 - 1
    mask = (ndimage.gaussian_filter(rng.random((4, 40, 40)), sigma=(0, 2, 2)) > 0.56).astype(float)
    mask[2] = 0
    roi = np.zeros_like(mask)
    roi[:, 3:37, 3:37] = 1
    result = detect_lesions(batch(*amap), batch(*mask), batch(*roi), threshold=0.55)
    reference = reference_detection(amap, mask, roi, 0.55)
    assert len(reference) > 5 and 0 < result["tp"].sum() < len(reference) and result["fp"].sum() > 0
    assert_matches_reference(result, reference)
    assert 2 not in result["slice"]


def test_precomputed_components_give_the_same_detection() -> None:
    rng = np.random.default_rng(7)
    amap = ndimage.gaussian_filter(rng.random((3, 32, 32)), sigma=(0, 2, 2)) * 3 - 1
    mask = (ndimage.gaussian_filter(rng.random((3, 32, 32)), sigma=(0, 2, 2)) > 0.55).astype(float)
    roi = np.ones_like(mask)
    components = batch_components(batch(*mask))
    assert components.shape == (3, 32, 32) and components.max() > 1
    for threshold in (0.4, 0.55):
        direct = detect_lesions(batch(*amap), batch(*mask), batch(*roi), threshold)
        shared = detect_lesions(batch(*amap), batch(*mask), batch(*roi), threshold, components=components)
        assert direct.keys() == shared.keys() and len(direct["tp"]) > 3
        for key in direct:
            np.testing.assert_array_equal(direct[key], shared[key])


def test_eight_connectivity() -> None:
    mask = np.zeros((8, 8))
    mask[2, 2] = mask[3, 3] = 1  # diagonal neighbours: one lesion
    mask[6, 6] = 1
    labels, count = lesion_components(mask)
    assert count == 2 and labels[2, 2] == labels[3, 3] != labels[6, 6]


def test_no_lesions() -> None:
    zeros = torch.zeros(2, 1, 16, 16)
    result = detect_lesions(torch.rand(2, 1, 16, 16), zeros, torch.ones(2, 1, 16, 16), threshold=0.5)
    assert all(len(v) == 0 for v in result.values())
    summary = summarise_detection(result, size_edges=[10])
    assert summary["n_lesions"] == 0 and "no lesions" in summary["note"]
    assert all(math.isnan(summary[k]) for k in ("detection_rate", "precision", "recall", "f1", "fp_mass"))
    assert [b["n"] for b in summary["size_bins"]] == [0, 0]
    assert all(math.isnan(b["detection_rate"]) for b in summary["size_bins"])


def test_size_bins_edges() -> None:
    per_lesion = {"area": np.array([5, 10, 19, 20, 40, 100]), "tp": np.array([0, 1, 1, 0, 1, 1]),
                  **{k: np.zeros(6) for k in ("precision", "recall", "f1", "fp_mass")}}
    bins = summarise_detection(per_lesion, size_edges=[10, 20, 40])["size_bins"]
    assert [b["n"] for b in bins] == [1, 2, 1, 2]
    assert [b["detection_rate"] for b in bins] == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="increasing"):
        summarise_detection(per_lesion, size_edges=[20, 10])
