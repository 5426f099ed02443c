"""Multi-octave 3-D simplex noise in torch, the structured diffusion noise of AnoDDPM ("DDPM-S").

AnoDDPM (Wyatt et al., CVPR-W 2022) replaces the Gaussian noise of a DDPM by simplex noise: every 2-D image is a
slice of 3-D noise, evaluated at ``(x / f, y / f, T / f)`` for pixel column ``x``, row ``y`` and a slice coordinate
``T``, summed over octaves: ``noise += amplitude * noise3(x / f, y / f, T / f); f /= 2; amplitude *= persistence``,
starting with ``f = frequency`` and ``amplitude = 1``. ``frequency`` is therefore the wavelength in pixels of the
first, coarsest octave (defaults of the AnoDDPM / GenAI_UAD configs: 6 octaves, persistence 0.8, frequency 64).

Deviation from the original: AnoDDPM evaluates OpenSimplex noise (with numba); this module implements *classic*
3-D simplex noise (Perlin 2001, as explained by Gustavson, "Simplex noise demystified", 2005): skew ``F3 = 1/3``,
unskew ``G3 = 1/6``, four simplex corners, 12 gradients at the midpoints of the cube edges and the radial falloff
``(r0 - d^2)^4``. Its corner ordering is branch-free, so it vectorises as plain tensor ops (``gather`` with long
indices) and runs on CPU and CUDA alike. The octave / persistence / wavelength semantics are the original's; the
lattice, and so the exact patterns, differ from OpenSimplex. ``r0 = 0.5`` rather than Gustavson's 0.6: with 0.6 a
corner's kernel reaches past the simplices that contain it, which leaves small discontinuities in 3-D; 0.5 gives
continuous noise. The output is scaled so that a single octave lies in [-1, 1] (``SCALE``, from the worst case
over all gradient choices; the std of one octave is about 0.39, of the default 6 octaves about 0.64).

Precision: everything runs in float32 on the device. Random offsets of up to 1000 pixels divided by the wavelength
of a fine octave would make coordinates of several hundred lattice units and cost float32 resolution, so each
image's offset is split (in float64, on the CPU) into an integer lattice shift of the skewed grid, which only
enters the corner hashes (mod 256), and a fractional rest below one lattice cell. The evaluated float32
coordinates thus stay below ``1 + size / wavelength`` while the noise equals the one at the full coordinates.
``simplex_noise`` refuses octaves whose coordinates would exceed ``MAX_COORDINATE`` lattice units (finest
wavelength far below a pixel, where float32 could no longer resolve a pixel step). On CPU the points are evaluated
in blocks of about ``CPU_CHUNK`` so that the many temporaries stay in cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

F3 = 1.0 / 3.0  # skew factor: (x, y, z) -> (x, y, z) + (x + y + z) * F3 maps the simplex grid onto the cube grid
G3 = 1.0 / 6.0  # unskew factor: (i, j, k) -> (i, j, k) - (i + j + k) * G3
R0 = 0.5  # squared radius of a corner's kernel (r0 - d^2)^4
SCALE = 76.88  # single-octave |values| <= 1: the largest sum over corners of falloff * max_g(g . d) is 1 / 76.8808
OFFSET_RANGE = 1000.0  # random x / y offsets and slice coordinate in [0, OFFSET_RANGE) pixels
CPU_CHUNK = 1 << 16  # points evaluated at once on CPU (cache-sized temporaries: measured 10-35 % faster than all)
DEVICE_CHUNK = 1 << 22  # points evaluated at once on other devices
MAX_COORDINATE = 2.0**16  # largest pixel coordinate / finest wavelength (float32 step there: 1 / 128 lattice unit)

# Gustavson's 12 gradients: the midpoints of the edges of the cube [-1, 1]^3 (index = perm value % 12).
GRADIENTS = (
    (1, 1, 0), (-1, 1, 0), (1, -1, 0), (-1, -1, 0),
    (1, 0, 1), (-1, 0, 1), (1, 0, -1), (-1, 0, -1),
    (0, 1, 1), (0, -1, 1), (0, 1, -1), (0, -1, -1),
)  # fmt: skip


def _check_perm(perm: Tensor) -> None:
    if perm.dim() != 2 or perm.shape[1] != 256:
        raise ValueError(f"perm must have shape [B, 256], got {list(perm.shape)}")
    if perm.dtype != torch.long:
        raise ValueError(f"perm must be a long tensor, got {perm.dtype}")


def _noise3(x: Tensor, y: Tensor, z: Tensor, perm: Tensor, shift: Tensor | None = None) -> Tensor:
    """Simplex noise at (x, y, z) [B, N] for tables ``perm`` [B, 256]; ``shift`` [B, 3] long (or None) is added to
    the skewed-lattice indices of every corner before hashing (the integer part of a large offset)."""
    # Which skewed unit cube, and the point relative to its origin corner (unskewed).
    s = (x + y + z).mul_(F3)
    fi, fj, fk = torch.floor(x + s), torch.floor(y + s), torch.floor(z + s)
    t = (fi + fj + fk).mul_(G3)
    x0, y0, z0 = x - fi + t, y - fj + t, z - fk + t
    if shift is not None:  # exact in float: shift is reduced mod 256, lattice indices are small
        shift = shift.remainder(256).to(fi.dtype)
        fi, fj, fk = fi + shift[:, 0:1], fj + shift[:, 1:2], fk + shift[:, 2:3]
    ii, jj, kk = (f.to(torch.int32).bitwise_and_(255) for f in (fi, fj, fk))

    # Which of the six simplices of the cube: the corners follow the coordinates ranked from largest to smallest
    # (ties broken as in Gustavson's branches).
    xy, yz, xz = x0 >= y0, y0 >= z0, x0 >= z0
    i1, j1 = xy & xz, yz & ~xy  # one-hot: the largest coordinate
    k1 = ~(i1 | j1)
    i2, j2 = xy | xz, yz | ~xy  # two-hot: the two largest coordinates
    k2 = ~(i2 & j2)

    table = torch.cat([perm, perm], dim=1).to(torch.int32)  # [B, 512]: index sums up to 511 need no wrap
    grads = torch.tensor(GRADIENTS, dtype=x.dtype, device=x.device)[table.long() % 12]  # [B, 512, 3]
    gx, gy, gz = (grads[..., c].contiguous() for c in range(3))

    corners = (  # the corner's offset on the skewed grid (None: 0, True: 1) and its unskew term (di + dj + dk) * G3
        (None, 0.0),
        ((i1, j1, k1), G3),
        ((i2, j2, k2), 2 * G3),
        (True, 3 * G3),
    )
    total = torch.zeros_like(x0)
    for offset, g in corners:
        # Corner displacement in unskewed coordinates: (x0, y0, z0) - (di, dj, dk) + (di + dj + dk) * G3.
        if offset is None:
            cx, cy, cz, a, b, c = x0, y0, z0, ii, jj, kk
        elif offset is True:
            cx, cy, cz, a, b, c = x0 + (g - 1), y0 + (g - 1), z0 + (g - 1), ii + 1, jj + 1, kk + 1
        else:
            di, dj, dk = offset
            cx, cy, cz = (x0 + g).sub_(di.to(x0.dtype)), (y0 + g).sub_(dj.to(x0.dtype)), (z0 + g).sub_(dk.to(x0.dtype))
            a, b, c = ii + di.to(torch.int32), jj + dj.to(torch.int32), kk + dk.to(torch.int32)
        h = torch.gather(table, 1, c.long()).add_(b)
        h = torch.gather(table, 1, h.long()).add_(a).long()
        dot = torch.gather(gx, 1, h).mul_(cx).addcmul_(torch.gather(gy, 1, h), cy).addcmul_(torch.gather(gz, 1, h), cz)
        falloff = (cx * cx).addcmul_(cy, cy).addcmul_(cz, cz).neg_().add_(R0).clamp_min_(0.0)
        falloff = falloff.mul_(falloff)
        total.addcmul_(falloff.mul_(falloff), dot)
    return total.mul_(SCALE)


def simplex_noise_3d(x: Tensor, y: Tensor, z: Tensor, perm: Tensor) -> Tensor:
    """Single-octave simplex noise at points (x, y, z) (same-shape float tensors, any leading shape [B, ...]);
    ``perm`` [B, 256] long: one permutation of 0..255 per batch entry (hashing of lattice corners). Values in about
    [-1, 1] (bounded by 1). Computed in the dtype of ``x`` on its device."""
    _check_perm(perm)
    if x.shape != y.shape or x.shape != z.shape:
        raise ValueError(f"x, y and z must have the same shape, got {list(x.shape)}, {list(y.shape)}, {list(z.shape)}")
    if x.dim() < 1 or x.shape[0] != perm.shape[0]:
        raise ValueError(f"x must have leading dimension B = {perm.shape[0]} (rows of perm), got {list(x.shape)}")
    batch = perm.shape[0]
    flat = [c.reshape(batch, -1) for c in (x, y, z)]
    return _noise3(*flat, perm.to(x.device)).reshape(x.shape)


def random_permutations(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """[n, 256] independent permutations of 0..255 (drawn on CPU with ``generator``, moved to ``device``)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    keys = torch.rand(n, 256, generator=generator, dtype=torch.float64)
    return keys.argsort(dim=1).to(device)


def _check_args(shape: Sequence[int], octaves: int, persistence: float, frequency: float, generator) -> None:
    if len(shape) != 4 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must be [B, C, H, W] with 4 positive sizes, got {list(shape)}")
    if int(octaves) != octaves or octaves < 1:
        raise ValueError(f"octaves must be an integer >= 1, got {octaves}")
    if not (math.isfinite(persistence) and persistence > 0):
        raise ValueError(f"persistence must be positive, got {persistence}")
    if not (math.isfinite(frequency) and frequency > 0):
        raise ValueError(f"frequency (the wavelength in pixels of the first octave) must be positive, got {frequency}")
    finest = frequency / 2.0 ** (int(octaves) - 1)
    if max(shape[2:]) / finest > MAX_COORDINATE:
        raise ValueError(
            f"octaves = {octaves} with frequency = {frequency} give a finest wavelength of {finest:.3g} px: "
            f"an image of {max(shape[2:])} px spans more than {MAX_COORDINATE:.0f} lattice units, "
            "beyond float32 resolution"
        )
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator (randomness is drawn on CPU), got {generator.device}")


def simplex_noise(
    shape: Sequence[int],
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 64.0,
    generator: torch.Generator | None = None,
    device=None,
    dtype=torch.float32,
    normalise: bool = True,
) -> Tensor:
    """Multi-octave simplex noise of ``shape`` [B, C, H, W]: every (sample, channel) image is an independent
    2D slice of 3D noise (its own permutation table and a random slice coordinate / offset drawn from ``generator``).
    ``normalise``: standardise each image to zero mean and unit variance (what the Gaussian-noise maths of a DDPM
    assumes; the original leaves the raw amplitude).

    Image ``n`` (of B * C, row-major) is ``sum_k persistence^k * noise3((w + ox) / f_k, (h + oy) / f_k, oz / f_k)``
    over octaves ``k`` with ``f_k = frequency / 2^k`` (``w`` column, ``h`` row). Draws from ``generator`` (CPU, the
    default generator when None), in this order: ``random_permutations(B * C)``, then the offsets ``(ox, oy, oz)``
    as ``OFFSET_RANGE * torch.rand(B * C, 3, dtype=float64)``. The draws never depend on ``device``, so neither do
    the values (up to float rounding of the device). ``normalise`` uses the population std (a constant image, e.g.
    1 x 1, becomes zeros).
    """
    _check_args(shape, octaves, persistence, frequency, generator)
    batch, channels, height, width = (int(s) for s in shape)
    n = batch * channels
    perm = random_permutations(n, generator)
    offsets = OFFSET_RANGE * torch.rand(n, 3, generator=generator, dtype=torch.float64)

    # Per octave, the offset in lattice units split on the skewed grid: integer shift (hash only) + fractional rest.
    wavelengths = frequency / 2.0 ** torch.arange(int(octaves), dtype=torch.float64)  # [K]
    lattice = offsets[:, None, :] / wavelengths[None, :, None]  # [n, K, 3]
    skewed = lattice + lattice.sum(dim=-1, keepdim=True) * F3
    shift = torch.floor(skewed)
    rest = skewed - shift
    rest = rest - rest.sum(dim=-1, keepdim=True) * G3  # unskewed fractional offset, within one cell

    perm = perm.to(device)
    shift = shift.long().to(device)
    rest = rest.to(device=device, dtype=torch.float32)
    columns = torch.arange(width, device=device, dtype=torch.float32)
    rows = torch.arange(height, device=device, dtype=torch.float32)

    # Blocks of [images, rows, width] with about ``chunk`` points: on CPU the temporaries then stay in cache.
    chunk = CPU_CHUNK if torch.device(device or "cpu").type == "cpu" else DEVICE_CHUNK
    block_rows = max(1, min(height, chunk // width))
    block_images = max(1, chunk // (block_rows * width))
    total = torch.zeros(n, height, width, device=device, dtype=torch.float32)
    for a in range(0, n, block_images):
        images = slice(a, min(n, a + block_images))
        for r in range(0, height, block_rows):
            lines = slice(r, min(height, r + block_rows))
            size = (images.stop - images.start, lines.stop - lines.start, width)
            amplitude = 1.0
            for k in range(int(octaves)):
                step = float(1.0 / wavelengths[k])
                offset = rest[images, k]  # [b, 3]
                x = (columns * step)[None, None, :] + offset[:, 0, None, None]
                y = (rows[lines] * step)[None, :, None] + offset[:, 1, None, None]
                x, y, z = x.expand(size), y.expand(size), offset[:, 2, None, None].expand(size)
                flat = [c.reshape(size[0], -1) for c in (x, y, z)]
                noise = _noise3(*flat, perm[images], shift[images, k]).view(size)
                total[images, lines].add_(noise, alpha=amplitude)
                amplitude *= persistence

    if normalise:
        mean = total.mean(dim=(1, 2), keepdim=True)
        centred = total - mean
        std = centred.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
        total = torch.where(std > 0, centred / std.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(total))
    return total.view(batch, channels, height, width).to(dtype)
