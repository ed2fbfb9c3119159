"""Grid helpers of the phantoms: coordinates, smooth random fields, upsampling, row quantiles.

Everything here is a single correctly-rounded op per element (see ``phantom``'s Determinism):
fields are drawn on a coarse grid and upsampled with a separable linear interpolation.
Voxel units are millimetres (1 mm spacing).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import rng

_FRAC_MIN, _FRAC_MAX = 0.04, 0.33  # target foreground fraction band of the level shift
_N_QUANTILE = 4096  # voxels per row used for per-row quantiles (sorting all is slow)
BIG = 1.0e6  # "far away": offset for inactive components, distance where there is none
F64 = torch.float64


def structure_scale(shape) -> float:
    """Structure scale L (mm): geometric mean of the patch sizes."""
    return float(shape[0] * shape[1] * shape[2]) ** (1 / 3)


def grid_axes(shape, device, step: int = 1):
    """Centred coordinates (mm, float64) of grid nodes ``0, step, 2 step, ...`` per axis.

    With ``step > 1`` these are the nodes of a coarse grid (``ceil(n/step) + 1`` of them, so
    ``upsample`` covers the whole axis).
    """
    out = []
    for n in shape:
        m = n if step == 1 else math.ceil(n / step) + 1
        out.append(torch.arange(m, device=device, dtype=F64) * step - (n - 1) / 2)
    return out


def plane(axes, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(x - c) . v`` on a grid -> (B, n0, n1, n2) float64; v, c (B, 3). Only used on coarse
    grids (full-size affine terms are folded into coarse fields before upsampling)."""
    z, y, x = axes
    return (((z[None] - c[:, :1]) * v[:, :1])[:, :, None, None]
            + ((y[None] - c[:, 1:2]) * v[:, 1:2])[:, None, :, None]
            + ((x[None] - c[:, 2:3]) * v[:, 2:3])[:, None, None, :])


def upsample(x: torch.Tensor, shape, step: int) -> torch.Tensor:
    """Trilinear interpolation of coarse nodes (B, C, m0, m1, m2) at voxel multiples of ``step``
    -> (B, C, D, H, W).

    Separable, one axis at a time (innermost first, so only the last pass is full size), each
    pass ``lo + diff * t`` on a broadcast view: two exact elementwise ops. Reproduces affine
    functions exactly, which lets callers fold planes and scalings into the coarse field.
    """
    if step == 1:
        return x[..., : shape[0], : shape[1], : shape[2]]
    t = torch.arange(step, device=x.device, dtype=x.dtype) / step
    for ax, n in ((4, shape[2]), (3, shape[1]), (2, shape[0])):
        m = x.shape[ax]
        lo = x.narrow(ax, 0, m - 1)
        diff = (x.narrow(ax, 1, m - 1) - lo).unsqueeze(ax + 1)
        tv = t.view([step if d == ax + 1 else 1 for d in range(x.dim() + 1)])
        y = diff * tv
        y += lo.unsqueeze(ax + 1)
        size = list(x.shape)
        size[ax] = (m - 1) * step
        x = y.reshape(size).narrow(ax, 0, n)
    return x


def _gauss_taps(sigma: float) -> list[float]:
    """Normalised Gaussian kernel (in grid cells), truncated at 2 sigma."""
    r = max(1, math.ceil(2.0 * sigma))
    w = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-r, r + 1)]
    s = sum(w)
    return [x / s for x in w]


def keyed_field(keys: torch.Tensor, tag: int, shape, channels: int, sigma: float):
    """``random_field`` drawn from the substream ``tag`` of ``keys``."""
    return random_field(rng.normal_seeds(rng.substream(keys, tag)), shape, channels, sigma)


def random_field(seeds: torch.Tensor, shape, channels: int, sigma: float):
    """Coarse nodes of a stationary Gaussian random field, unit variance, Gaussian correlation
    of width ~``sigma`` mm -> (field (B, C, m0, m1, m2) float32, step).

    White noise on a grid of step ~sigma/1.5, blurred there by a Gaussian of ~1.2-2 cells (so
    the upsampled field is smooth and stationary, without a visible grid), normalised
    analytically (sum of squared taps). Callers fold scalings / affine terms in, then call
    ``upsample(field, shape, step)``.
    """
    step = max(1, round(sigma / 1.5))
    taps = _gauss_taps(sigma / step)
    r = len(taps) // 2
    m = [n if step == 1 else math.ceil(n / step) + 1 for n in shape]
    x = rng.normal_seeded(seeds, (channels, *(k + 2 * r for k in m)))
    for dim in (2, 3, 4):  # valid separable blur by shifted adds (exact, per voxel)
        n = x.shape[dim] - 2 * r
        acc = x.narrow(dim, 0, n) * taps[0]
        for k in range(1, len(taps)):
            acc += x.narrow(dim, k, n) * taps[k]
        x = acc
    return x * (1.0 / math.sqrt(sum(t * t for t in taps)) ** 3), step


def row_quantiles(x: torch.Tensor, qs) -> torch.Tensor:
    """Nearest-rank quantiles per row over a fixed quasi-random set of <= 4096 voxels
    -> (len(qs), B).

    A sort is exact whatever the batch (unlike float sums); the voxel set depends only on the
    volume size (golden-ratio hashing of the flat index, no aliasing with the grid axes).
    """
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[1]
    if n > _N_QUANTILE:
        idx = (torch.arange(_N_QUANTILE, device=x.device, dtype=torch.int64) * 0x9E3779B1) % n
        flat = flat[:, idx]
    if flat.device.type == "cpu":
        # numpy's vectorised sort is ~20x faster than torch's on CPU rows of 4096 floats;
        # a sort's result is the same whichever algorithm made it
        srt = torch.from_numpy(np.sort(flat.numpy(), axis=1))
    else:
        srt = torch.sort(flat, dim=1).values
    m = srt.shape[1]
    idx = [min(m - 1, max(0, int(round(q * (m - 1))))) for q in qs]
    return srt[:, idx].T


def fit_level(phi: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Level shift (B,) mm that brings the fraction of ``phi < level`` into the target band.

    0 when the natural fraction is in band, else the quantile at the band's edge, clamped to
    [lo, hi] so shapes are never distorted much; never lets the mask be empty.
    """
    q = row_quantiles(phi, (0.0, _FRAC_MIN, _FRAC_MAX))
    level = torch.minimum(q[1].clamp(min=0.0), q[2]).clamp(lo, hi)
    return torch.maximum(level, q[0] + 1e-3)


def col(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) float32, to broadcast a per-episode scalar over a volume."""
    return v.float()[:, None, None, None]

