"""Simplex noise (AnoDDPM's "DDPM-S"): scalar reference of classic 3-D simplex noise, draws, statistics, correlation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lightning_modules.nets.simplex import (
    OFFSET_RANGE,
    SCALE,
    random_permutations,
    simplex_noise,
    simplex_noise_3d,
)

# Gustavson's 12 gradients (midpoints of the edges of the cube), in his order: index = perm value % 12.
GRAD3 = [
    (1, 1, 0), (-1, 1, 0), (1, -1, 0), (-1, -1, 0),
    (1, 0, 1), (-1, 0, 1), (1, 0, -1), (-1, 0, -1),
    (0, 1, 1), (0, -1, 1), (0, 1, -1), (0, -1, -1),
]  # fmt: skip
RADIUS2 = 0.5  # r0 of the kernel (r0 - d^2)^4 (the module's documented choice)


def reference_noise3(x: float, y: float, z: float, perm: list[int]) -> float:
    """Classic 3-D simplex noise at one point, step by step as in Gustavson's "Simplex noise demystified"."""
    p = [perm[i & 255] for i in range(512)]
    skew = (x + y + z) / 3.0
    i, j, k = math.floor(x + skew), math.floor(y + skew), math.floor(z + skew)
    unskew = (i + j + k) / 6.0
    x0, y0, z0 = x - (i - unskew), y - (j - unskew), z - (k - unskew)
    if x0 >= y0:
        if y0 >= z0:
            i1, j1, k1, i2, j2, k2 = 1, 0, 0, 1, 1, 0
        elif x0 >= z0:
            i1, j1, k1, i2, j2, k2 = 1, 0, 0, 1, 0, 1
        else:
            i1, j1, k1, i2, j2, k2 = 0, 0, 1, 1, 0, 1
    elif y0 < z0:
        i1, j1, k1, i2, j2, k2 = 0, 0, 1, 0, 1, 1
    elif x0 < z0:
        i1, j1, k1, i2, j2, k2 = 0, 1, 0, 0, 1, 1
    else:
        i1, j1, k1, i2, j2, k2 = 0, 1, 0, 1, 1, 0
    ii, jj, kk = i & 255, j & 255, k & 255
    corners = [
        (x0, y0, z0, p[ii + p[jj + p[kk]]] % 12),
        (x0 - i1 + 1 / 6, y0 - j1 + 1 / 6, z0 - k1 + 1 / 6, p[ii + i1 + p[jj + j1 + p[kk + k1]]] % 12),
        (x0 - i2 + 2 / 6, y0 - j2 + 2 / 6, z0 - k2 + 2 / 6, p[ii + i2 + p[jj + j2 + p[kk + k2]]] % 12),
        (x0 - 1 + 3 / 6, y0 - 1 + 3 / 6, z0 - 1 + 3 / 6, p[ii + 1 + p[jj + 1 + p[kk + 1]]] % 12),
    ]
    total = 0.0
    for dx, dy, dz, gi in corners:
        t = RADIUS2 - dx * dx - dy * dy - dz * dz
        if t > 0:
            gx, gy, gz = GRAD3[gi]
            total += t**4 * (gx * dx + gy * dy + gz * dz)
    return SCALE * total


def test_scale_bounds_single_octave_to_unit_range():
    """The largest single-corner peak, max_d (r0 - d^2)^4 * sqrt(2) d at d^2 = r0 / 9, scaled, is just below 1."""
    d = math.sqrt(RADIUS2 / 9)
    assert 0.99 < SCALE * (RADIUS2 - d * d) ** 4 * math.sqrt(2) * d <= 1.0


def random_points(rng: np.random.Generator, count: int, spread: float) -> np.ndarray:
    """[count, 3] points: uniform in [-spread, spread]^3, lattice points, points near cube faces and on the
    boundaries between the simplices of a cube (x0 = y0 etc. in the unskewed cell)."""
    uniform = rng.uniform(-spread, spread, (count, 3))
    lattice = rng.integers(-4, 5, (count // 4, 3)).astype(float)  # cube corners (skew of integers is integer)
    near_faces = lattice + rng.choice([-1e-7, 0.0, 1e-7], lattice.shape)
    ties = rng.uniform(-spread, spread, (count // 4, 3))
    ties[:, 1] = ties[:, 0]  # x = y: x0 = y0 in the cell, a tie of the corner ordering
    diagonal = rng.uniform(-spread, spread, (count // 8, 1)).repeat(3, axis=1)  # x = y = z: all tied
    return np.concatenate([uniform, lattice, near_faces, ties, diagonal])


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_noise3_matches_scalar_reference(dtype, tol):
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(1)
    perm = random_permutations(2, generator)
    points = [random_points(rng, 120, 6.0 if dtype == torch.float32 else 300.0) for _ in range(2)]
    xyz = torch.tensor(np.stack(points), dtype=dtype)  # [2, P, 3]
    got = simplex_noise_3d(xyz[..., 0], xyz[..., 1], xyz[..., 2], perm)
    assert got.shape == xyz.shape[:2] and got.dtype == dtype
    coords = xyz.double().numpy()  # the reference at exactly the (rounded) points given
    want = [[reference_noise3(*map(float, point), perm[b].tolist()) for point in coords[b]] for b in range(len(points))]
    np.testing.assert_allclose(got.double().numpy(), np.array(want), rtol=0, atol=tol)
    assert np.abs(want).max() > 0.3  # the points do probe the noise, not only its zeros


def test_noise3_any_leading_shape_and_per_row_tables():
    generator = torch.Generator().manual_seed(2)
    perm = random_permutations(3, generator)
    x, y, z = (torch.rand(3, 4, 5, generator=generator, dtype=torch.float64) * 10 for _ in range(3))
    got = simplex_noise_3d(x, y, z, perm)
    assert got.shape == (3, 4, 5)
    for b in range(3):
        row = simplex_noise_3d(x[b : b + 1], y[b : b + 1], z[b : b + 1], perm[b : b + 1])
        torch.testing.assert_close(got[b : b + 1], row, rtol=0, atol=1e-14)
    # another row's table gives another pattern at the same points
    swapped = simplex_noise_3d(x, y, z, perm.flip(0))
    assert (swapped[0] - got[0]).abs().max() > 0.1


def test_single_octave_values_within_unit_range():
    noise = simplex_noise(
        [8, 1, 64, 64], octaves=1, frequency=4.0, normalise=False, generator=torch.Generator().manual_seed(3)
    )
    assert noise.abs().max() <= 1.0
    assert noise.abs().max() > 0.8  # the scale is not far too small either


def test_random_permutations():
    perms = random_permutations(5, torch.Generator().manual_seed(0))
    assert perms.shape == (5, 256) and perms.dtype == torch.long
    assert torch.equal(perms.sort(dim=1).values, torch.arange(256).expand(5, 256))
    assert len({tuple(row.tolist()) for row in perms}) == 5
    assert torch.equal(perms, random_permutations(5, torch.Generator().manual_seed(0)))


def test_multi_octave_matches_reference_at_full_coordinates():
    """Replays the documented draws (permutations, then offsets) and sums the scalar reference over octaves at the
    full pixel coordinates ((w + ox) / f, (h + oy) / f, oz / f): checks octave semantics and the offset split."""
    shape, octaves, persistence, frequency = (2, 2, 4, 5), 3, 0.8, 8.0
    got = simplex_noise(
        shape, octaves, persistence, frequency, generator=torch.Generator().manual_seed(7), normalise=False
    )
    replay = torch.Generator().manual_seed(7)
    perms = random_permutations(4, replay)
    offsets = (OFFSET_RANGE * torch.rand(4, 3, generator=replay, dtype=torch.float64)).tolist()
    want = np.zeros((4, 4, 5))
    for n, (ox, oy, oz) in enumerate(offsets):
        table = perms[n].tolist()
        for h in range(4):
            for w in range(5):
                f, amplitude = frequency, 1.0
                for _ in range(octaves):
                    want[n, h, w] += amplitude * reference_noise3((w + ox) / f, (h + oy) / f, oz / f, table)
                    f, amplitude = f / 2, amplitude * persistence
    np.testing.assert_allclose(got.reshape(4, 4, 5).numpy(), want, rtol=0, atol=2e-5)
    assert np.abs(want).max() > 0.2


def test_deterministic_per_seed_and_independent_images():
    def draw(seed, **kwargs):
        return simplex_noise([3, 2, 24, 24], frequency=8.0, generator=torch.Generator().manual_seed(seed), **kwargs)

    first = draw(0)
    assert first.shape == (3, 2, 24, 24) and first.dtype == torch.float32
    assert torch.equal(first, draw(0))
    assert not torch.allclose(first, draw(1), atol=0.1)
    images = first.reshape(6, -1)
    for a in range(6):
        for b in range(a + 1, 6):
            assert (images[a] - images[b]).abs().max() > 0.5, (a, b)
    # dtype only casts the float32 result; the device does not change the draws
    torch.testing.assert_close(draw(0, dtype=torch.float64), first.double(), rtol=0, atol=0)
    assert torch.equal(draw(0, device="cpu"), first)
    # generator=None draws from the default generator
    torch.manual_seed(5)
    default = simplex_noise([1, 1, 8, 8], frequency=4.0)
    torch.manual_seed(5)
    assert torch.equal(default, simplex_noise([1, 1, 8, 8], frequency=4.0))


def test_normalised_images_have_zero_mean_unit_std():
    noise = simplex_noise([4, 3, 32, 40], generator=torch.Generator().manual_seed(0)).double().numpy()
    images = noise.reshape(12, -1)
    assert np.abs(images.mean(axis=1)).max() < 1e-5
    assert np.abs(images.std(axis=1) - 1).max() < 1e-4


def test_raw_noise_has_zero_mean():
    noise = (
        simplex_noise(
            [96, 1, 32, 32], octaves=4, frequency=8.0, normalise=False, generator=torch.Generator().manual_seed(0)
        )
        .double()
        .numpy()
    )
    image_means = noise.reshape(96, -1).mean(axis=1)  # pixels of one image are correlated; images independent
    standard_error = image_means.std(ddof=1) / math.sqrt(len(image_means))
    assert standard_error < 0.02  # the test can tell a bias of 0.1
    assert abs(image_means.mean()) < 4 * standard_error
    assert 0.2 < noise.std() < 1.5  # raw amplitude: not rescaled


def lag_correlation(images: np.ndarray, lag: int) -> float:
    """Pearson correlation of pixel pairs ``lag`` apart along rows and along columns, pooled over images."""
    a = np.concatenate([images[:, :, :-lag].ravel(), images[:, :-lag, :].ravel()])
    b = np.concatenate([images[:, :, lag:].ravel(), images[:, lag:, :].ravel()])
    return float(np.corrcoef(a, b)[0, 1])


def test_spatial_correlation():
    generator = torch.Generator().manual_seed(0)
    single = simplex_noise([32, 1, 64, 64], octaves=1, frequency=16.0, generator=generator).numpy()[:, 0]
    lags = [lag_correlation(single, lag) for lag in (1, 2, 4, 8)]
    assert lags[0] > 0.9
    assert all(a > b for a, b in itertools.pairwise(lags)), lags
    # kernels have radius sqrt(0.5) lattice units: pixels 2 wavelengths apart share no corner
    for lag in (32, 48):
        assert abs(lag_correlation(single, lag)) < 0.2
    multi = simplex_noise([32, 1, 64, 64], octaves=6, persistence=0.8, frequency=16.0, generator=generator).numpy()
    assert lag_correlation(multi[:, 0], 1) < lags[0] - 0.1
    white = torch.randn(32, 64, 64, generator=generator).numpy()
    assert abs(lag_correlation(white, 1)) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (4, 16, 16)}, "shape"),
        ({"shape": (1, 1, 0, 16)}, "shape"),
        ({"shape": (1, 1, 16, -2)}, "shape"),
        ({"octaves": 0}, "octaves"),
        ({"octaves": 1.5}, "octaves"),
        ({"persistence": 0.0}, "persistence"),
        ({"persistence": -0.5}, "persistence"),
        ({"frequency": 0.0}, "frequency"),
        ({"frequency": float("nan")}, "frequency"),
    ],
)
def test_argument_validation(kwargs, match):
    arguments = {"shape": (1, 1, 16, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        simplex_noise(**arguments)


def test_noise3_argument_validation():
    x = torch.zeros(2, 5)
    perm = random_permutations(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="perm"):
        simplex_noise_3d(x, x, x, perm[:, :100])
    with pytest.raises(ValueError, match="perm"):
        simplex_noise_3d(x, x, x, perm.int())
    with pytest.raises(ValueError, match="same shape"):
        simplex_noise_3d(x, x, torch.zeros(2, 4), perm)
    with pytest.raises(ValueError, match="leading dimension"):
        simplex_noise_3d(torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(3, 5), perm)


def test_blocks_do_not_change_the_result(monkeypatch):
    """Evaluating in blocks of images and rows (forced by a tiny chunk) gives the same noise as all at once."""
    import lightning_modules.nets.simplex as module

    def draw():
        return simplex_noise(
            [3, 2, 9, 7], octaves=3, frequency=4.0, normalise=False, generator=torch.Generator().manual_seed(11)
        )

    whole = draw()
    for chunk in (5, 20, 100):  # rows shorter than a block, several rows per block, several images per block
        monkeypatch.setattr(module, "CPU_CHUNK", chunk)
        torch.testing.assert_close(draw(), whole, rtol=0, atol=1e-6)


def test_too_fine_octaves_are_refused():
    with pytest.raises(ValueError, match="octaves"):
        simplex_noise((1, 1, 64, 64), octaves=30, frequency=64.0)
