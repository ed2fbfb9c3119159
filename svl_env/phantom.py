"""Procedural organ-like 3D phantoms with exact truth masks, batched over episodes.

``generate_phantoms(keys, shape)`` returns, for every episode key, an image patch that looks
like a crop of an MR or CT volume, and the exact boolean mask of the structure it shows.
Spacing is 1 mm isotropic: voxel units are millimetres throughout this module.

Geometry. Each family builds a signed distance-like field ``phi`` (mm, negative inside,
1-Lipschitz or close) on the voxel centres; the truth is exactly ``phi < 0``. Sizes scale
with the patch: ``L = (D*H*W)**(1/3)`` sets the structure scale, per-axis extents set where
things are placed, so non-cubic patches work.

- ``blob``: a lumpy solid organ -- smooth (polynomial smooth-min) union of a main ellipsoid and
  1-2 lobes, its surface displaced by low-frequency noise; may be cut by the patch border.
- ``tubular``: 2-3 curved vessels crossing the patch, radius ~1.5-4 mm at 32^3 (scaled with L),
  varying along the vessel; each centre line is where two noise-bent orthogonal planes meet.
- ``multi``: 2-4 separate small organs / nodes on a tilted ring; a carved Voronoi gap of 2 mm
  keeps them from touching even diagonally, so they are always distinct components.
- ``hollow``: a cyst / hollow organ -- a closed wall of varying thickness around a fluid cavity
  (the cavity is background), fully inside the patch so the cavity is enclosed.

A per-episode level shift (clamped to a few mm) keeps the foreground fraction in about
[4 %, 33 %]; the mask is never empty.

Intensities. Tissues get physical-ish values (CT: Hounsfield units; MR: arbitrary units) and are
mixed with *soft* occupancies -- a linear ramp of ``phi`` 1.0-1.6 voxels wide, i.e. the
fraction of a voxel's box inside a plane, so boundaries have partial volume. The background is
not flat: two tissue classes, "distractor" organs (other vessels for ``tubular``) with nearly the
foreground's intensity, small bright (CT: bone) or dark/bright (MR) clutter, fine texture. Then
a smooth multiplicative bias field and noise. So intensity alone does not give the answer.

- ``ct``: HU; bias on attenuation (tiny); Gaussian noise 6-20 HU; soft-tissue window
  (L 40-60, W 350-450 HU) mapped to [0, 1]; bone clutter saturates at 1.
- ``mr``: a.u.; strong multiplicative bias (+-12-32 %); Rician (magnitude) noise; 1st-99.5th
  percentile normalisation to [0, 1]; foreground moderately brighter than the main tissue.

Determinism. Row ``b`` depends only on ``keys[b]``, ``shape``, ``families``, ``modalities``,
bit for bit, whatever the batch: all draws go through ``svl_env.rng`` per row, and every
operation is a single correctly-rounded op (+, -, *, /, sqrt, min, max, clamp, where, sort),
also for the per-episode scalars (rotations come from normalised Gaussian quaternions, not
trigonometry; small sums are written out). Fused, transcendental or reducing kernels (exp,
sigmoid, sin, addcmul, lerp, interpolate, matmul, norm) are avoided on purpose: their
vectorised and scalar-tail code paths can differ in the last bit, and which elements fall in a
tail depends on how the *batch* is split across threads. Numbers differ between CPU and CUDA
but are reproducible on each (the CUDA path is not exercised by the CPU test-suite).

Cost: everything is batched torch on ``keys.device``; fields are drawn on a coarse grid and
upsampled with a separable linear interpolation, and ellipsoid quadratic forms are assembled
from three 2D planes, so the full-size work is a few dozen elementwise passes.
"""

# rng tags of this module (all >= 100, so they never meet other modules' tags). A family tag T
# gives uniforms ``rng.params(keys, T, n)`` and normals ``rng.normal(substream(keys, T), (n,))``
# (different generator seeds, so the two never share numbers):
#   100 family choice               101 modality choice
#   110 blob parameters             111 blob surface-displacement field
#   120 tubular parameters          121 tubular bend (2 per vessel) and radius fields
#   130 multi parameters            131 multi surface-displacement field
#   140 hollow parameters           141 hollow displacement and wall-thickness fields
#   150 intensity parameters (column 23: partial-volume width)
#   151 background fields, under substreams 0-3 of the key: tissue partition, distractor
#       organs, clutter, distractor vessels
#   152 bias field                  153 fine texture field
#   154 acquisition noise

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import rng

FAMILIES = ("blob", "tubular", "multi", "hollow")
MODALITIES = ("mr", "ct")

_FRAC_MIN, _FRAC_MAX = 0.04, 0.33  # target foreground fraction band of the level shift
_N_QUANTILE = 4096  # voxels per row used for per-row quantiles (sorting all is slow)
_CPU_CHUNK_VOXELS = 1 << 21  # largest batch generated at once on CPU (generate_phantoms)
_BIG = 1.0e6  # "far away": offset for inactive components, distance where there is none
_F64 = torch.float64


# ----------------------------------------------------------------------------- grid helpers
def _scale(shape) -> float:
    """Structure scale L (mm): geometric mean of the patch sizes."""
    return float(shape[0] * shape[1] * shape[2]) ** (1 / 3)


def _axes(shape, device, step: int = 1):
    """Centred coordinates (mm, float64) of grid nodes ``0, step, 2 step, ...`` per axis.

    With ``step > 1`` these are the nodes of a coarse grid (``ceil(n/step) + 1`` of them, so
    ``_upsample`` covers the whole axis).
    """
    out = []
    for n in shape:
        m = n if step == 1 else math.ceil(n / step) + 1
        out.append(torch.arange(m, device=device, dtype=_F64) * step - (n - 1) / 2)
    return out


def _lin(axes, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(x - c) . v`` on a grid -> (B, n0, n1, n2) float64; v, c (B, 3). Only used on coarse
    grids (full-size affine terms are folded into coarse fields before upsampling)."""
    z, y, x = axes
    return (((z[None] - c[:, :1]) * v[:, :1])[:, :, None, None]
            + ((y[None] - c[:, 1:2]) * v[:, 1:2])[:, None, :, None]
            + ((x[None] - c[:, 2:3]) * v[:, 2:3])[:, None, None, :])


def _upsample(x: torch.Tensor, shape, step: int) -> torch.Tensor:
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


def _noise(keys: torch.Tensor, tag: int, shape, channels: int, sigma: float):
    """``_field`` drawn from the substream ``tag`` of ``keys``."""
    return _field(rng.normal_seeds(rng.substream(keys, tag)), shape, channels, sigma)


def _field(seeds: torch.Tensor, shape, channels: int, sigma: float):
    """Coarse nodes of a stationary Gaussian random field, unit variance, Gaussian correlation
    of width ~``sigma`` mm -> (field (B, C, m0, m1, m2) float32, step).

    White noise on a grid of step ~sigma/1.5, blurred there by a Gaussian of ~1.2-2 cells (so
    the upsampled field is smooth and stationary, without a visible grid), normalised
    analytically (sum of squared taps). Callers fold scalings / affine terms in, then call
    ``_upsample(field, shape, step)``.
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


def _row_quantiles(x: torch.Tensor, qs) -> torch.Tensor:
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


def _fit_level(phi: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Level shift (B,) mm that brings the fraction of ``phi < level`` into the target band.

    0 when the natural fraction is in band, else the quantile at the band's edge, clamped to
    [lo, hi] so shapes are never distorted much; never lets the mask be empty.
    """
    q = _row_quantiles(phi, (0.0, _FRAC_MIN, _FRAC_MAX))
    level = torch.minimum(q[1].clamp(min=0.0), q[2]).clamp(lo, hi)
    return torch.maximum(level, q[0] + 1e-3)


def _col(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) float32, to broadcast a per-episode scalar over a volume."""
    return v.float()[:, None, None, None]


class _Seeds(NamedTuple):
    """Generator seeds (B,) of a family's three draws (see the tag table): its parameters
    (``rng.params(keys, T, n)``), its Gaussians (``rng.normal(substream(keys, T), (n,))``) and
    its noise field (``_noise(keys, T + 1, ...)``)."""

    params: torch.Tensor
    gauss: torch.Tensor
    field: torch.Tensor

    def take(self, rows: torch.Tensor) -> "_Seeds":
        return _Seeds(*(s[rows] for s in self))

    def uniform(self, n: int) -> torch.Tensor:
        """(B, n) float64 U[0, 1) per-episode parameters."""
        return rng.uniform_seeded(self.params, (n,)).double()

    def normal(self, n: int) -> torch.Tensor:
        """(B, n) float64 standard normals per episode (directions, rotations)."""
        return rng.normal_seeded(self.gauss, (n,)).double()


def _family_seeds(keys: torch.Tensor, tags: torch.Tensor) -> _Seeds:
    """``_Seeds`` of every row, each row with its own family's tag T (tags (B,) int64): a
    mixed batch derives them in one batched hash chain instead of one chain per family."""
    k = rng.substream(keys, tags)
    return _Seeds(rng.hash32(k), rng.normal_seeds(k), rng.normal_seeds(rng.substream(keys, tags + 1)))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of (..., 3) vectors, written out: a fixed order of exact ops."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _normalize(g: torch.Tensor) -> torch.Tensor:
    """Unit vectors along the last axis (a Gaussian vector's direction is uniform)."""
    n2 = g[..., 0] * g[..., 0]
    for i in range(1, g.shape[-1]):
        n2 = n2 + g[..., i] * g[..., i]
    return g / torch.sqrt(n2.clamp(min=1e-30))[..., None]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                        a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], 1)


def _rotation(g: torch.Tensor) -> torch.Tensor:
    """Uniform random rotations (B, 3, 3) float64 from g (B, 4) standard normals.

    A normalised Gaussian 4-vector is a uniform unit quaternion; only +, *, /, sqrt are used
    (no trigonometry), so the matrix is bit-identical whatever the batch.
    """
    qx, qy, qz, qw = _normalize(g).unbind(1)
    return torch.stack([
        torch.stack([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)], 1),
        torch.stack([2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)], 1),
        torch.stack([2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)], 1),
    ], 1)


def _ellipsoid(axes, c, rot, radii, inactive=None, out=None, stretch=None) -> torch.Tensor:
    """Distance-like field (mm) of an ellipsoid -> (B, D, H, W) float32.

    c (B, 3) centre mm, rot (B, 3, 3) columns = principal axes, radii (B, 3) semi-axes mm.
    ``r_min * (rho - 1)`` with rho the ellipsoidal radius: exact on the surface, 1-Lipschitz
    (never overestimates a distance; along a long axis it reads down to r_min/r_max of it).
    The quadratic form ``r_min^2 rho^2`` is the sum of three 2D planes (zy, zx, yx) so it costs
    two full-size adds. ``inactive`` (B,) bool moves the ellipsoid out of reach; ``out`` is an
    optional (B, D, H, W) buffer to write into (fresh full-size allocations are slow on CPU);
    ``stretch`` (3,) >= 1 scales the rotated ellipsoid along the patch axes (still 1-Lipschitz).
    """
    rmin = radii.amin(1)
    w = rmin[:, None] / radii
    w = w * w
    M = (rot[:, :, None, :] * rot[:, None, :, :] * w[:, None, None, :]).unbind(-1)
    M = M[0] + M[1] + M[2]  # R diag(w) R^T with a fixed summation order
    if stretch is not None:
        M = M / (stretch[:, None] * stretch[None, :])
    X = [a[None] - c[:, i: i + 1] for i, a in enumerate(axes)]  # (B, n_i) float64
    pzy = ((M[:, 0, 0, None] * X[0] * X[0])[:, :, None] + (M[:, 1, 1, None] * X[1] * X[1])[:, None, :]
           + 2 * M[:, 0, 1, None, None] * X[0][:, :, None] * X[1][:, None, :])
    pzx = (M[:, 2, 2, None] * X[2] * X[2])[:, None, :] + 2 * M[:, 0, 2, None, None] * X[0][:, :, None] * X[2][:, None, :]
    pyx = 2 * M[:, 1, 2, None, None] * X[1][:, :, None] * X[2][:, None, :]
    if inactive is not None:
        pyx = pyx + (inactive.to(_F64) * _BIG)[:, None, None]
    q = torch.add(pzy.float()[:, :, :, None], pzx.float()[:, :, None, :], out=out)
    q += pyx.float()[:, None]
    return q.clamp_(min=0).sqrt_().sub_(_col(rmin))


def _smin_(a: torch.Tensor, b: torch.Tensor, k: float, tmp: torch.Tensor) -> torch.Tensor:
    """Polynomial smooth minimum (blend width k mm) written into ``a``: lobes merge through a
    rounded neck instead of a crease. ``tmp`` is scratch of a's shape."""
    h = torch.sub(a, b, out=tmp).abs_().neg_().add_(k).clamp_(min=0)
    torch.minimum(a, b, out=a)
    return a.sub_(h.mul_(h).mul_(0.25 / k))


# ----------------------------------------------------------------------------- families
def _blob(seeds: _Seeds, shape, dev):
    """Lumpy organ: smooth union of a main ellipsoid and 1-2 lobes, noise-displaced surface."""
    L = _scale(shape)
    dims = torch.tensor(shape, dtype=_F64, device=dev)
    axes = _axes(shape, dev)
    p = seeds.uniform(32)
    n_lobes = 1 + (p[:, 0] >= 0.5).long()
    c0 = (p[:, 1:4] - 0.5) * 0.24 * dims
    r0 = L * (0.21 + 0.14 * p[:, 4:7])
    g = seeds.normal(18)
    phi = _ellipsoid(axes, c0, _rotation(g[:, 0:4]), r0)
    dk, tmp = torch.empty_like(phi), torch.empty_like(phi)
    r_mean = ((r0[:, 0] + r0[:, 1] + r0[:, 2]) / 3)[:, None]
    # a lobe absent in every row of this subset would be a no-op (smin with "far" is exact)
    for k in range(int(n_lobes.max())):
        q = p[:, 10 + 9 * k: 19 + 9 * k]
        gk = g[:, 4 + 7 * k: 11 + 7 * k]
        ck = c0 + _normalize(gk[:, 0:3]) * r_mean * (0.3 + 0.4 * q[:, 2:3])
        rk = r_mean * (0.45 + 0.35 * q[:, 3:6])
        _ellipsoid(axes, ck, _rotation(gk[:, 3:7]), rk, n_lobes <= k, out=dk)
        _smin_(phi, dk, 0.1 * L, tmp)
    del dk, tmp
    fld, step = _field(seeds.field, shape, 1, 0.16 * L)
    amp = L * (0.025 + 0.035 * p[:, 28:29])
    phi += _upsample((fld * amp[:, :, None, None, None]).float(), shape, step)[:, 0]
    return phi.sub_(_col(_fit_level(phi, -0.1 * L, 0.1 * L))), None


def _tubular(seeds: _Seeds, shape, dev):
    """Curved vessels: each centre line is where two noise-bent orthogonal planes meet."""
    L = _scale(shape)
    dims = torch.tensor(shape, dtype=_F64, device=dev)
    p = seeds.uniform(32)
    n_tubes = 2 + (p[:, 0] >= 0.5).long()
    n_max = int(n_tubes.max())
    g = seeds.normal(9)
    fld, step = _field(seeds.field, shape, 7, 0.22 * L)
    cax = _axes(shape, dev, step)
    chans, radii = [], []
    # radius varies along the vessels: |g| < r_k * rf  <=>  |g / rf| < r_k, and dividing the
    # coarse fields by rf keeps everything affine-in-the-field for upsampling
    inv_rf = 1 / (1 + 0.2 * fld[:, 6]).clamp(min=0.6)
    for k in range(n_max):
        q = p[:, 1 + 9 * k: 10 + 9 * k]
        t = _normalize(g[:, 3 * k: 3 * k + 3])  # vessel direction
        helper = torch.zeros_like(t)
        helper[:, 0] = (t[:, 0].abs() < 0.9).to(_F64)
        helper[:, 1] = 1 - helper[:, 0]
        n1 = _normalize(_cross(t, helper))
        n2 = _cross(t, n1)
        c = (q[:, 2:5] - 0.5) * 0.5 * dims
        a = (L * (0.06 + 0.10 * q[:, 5]))[:, None, None, None]
        far = (n_tubes <= k).to(_F64)[:, None, None, None] * _BIG
        # plane offsets + bends, affine in the noise, so they survive upsampling exactly
        chans.append((_lin(cax, n1, c) + a * fld[:, 2 * k] + far) * inv_rf)
        chans.append((_lin(cax, n2, c) + a * fld[:, 2 * k + 1]) * inv_rf)
        radii.append(torch.clamp((1.5 + 2.5 * q[:, 6]) * L / 32, min=1.0))
    up = _upsample(torch.stack(chans, 1).float(), shape, step)
    phi = None
    for k in range(n_max):
        g1, g2 = up[:, 2 * k], up[:, 2 * k + 1]
        dk = g1.mul_(g1).add_(g2.mul_(g2)).sqrt_().sub_(_col(radii[k]))
        phi = dk if phi is None else torch.minimum(phi, dk, out=phi)
    return phi.sub_(_col(_fit_level(phi, -0.5, 1.5 * L / 32))), None


def _multi(seeds: _Seeds, shape, dev):
    """2-4 separate small organs on a tilted ring around the centre, kept apart by a gap."""
    L = _scale(shape)
    dims = torch.tensor(shape, dtype=_F64, device=dev)
    axes = _axes(shape, dev)
    p = seeds.uniform(48)
    n = 2 + (p[:, 0] * 3).floor().clamp(max=2).long()
    g = seeds.normal(24)
    frame = _rotation(g[:, 0:4])
    e1, e2 = frame[:, :, 0], frame[:, :, 1]
    # k-th of n directions on the ring (exact constants per n), jittered along the ring
    ang = [[2 * math.pi * k / m for k in range(4)] for m in (2, 3, 4)]
    cos_t = torch.tensor([[math.cos(a) for a in row] for row in ang], dtype=_F64, device=dev)[n - 2]
    sin_t = torch.tensor([[math.sin(a) for a in row] for row in ang], dtype=_F64, device=dev)[n - 2]
    cen = []
    for k in range(4):
        radial = cos_t[:, k, None] * e1 + sin_t[:, k, None] * e2
        tangent = cos_t[:, k, None] * e2 - sin_t[:, k, None] * e1
        jitter = ((p[:, 5 + k] - 0.5) * 0.4 * (2 * math.pi / n))[:, None]
        rad = 0.45 + 0.2 * p[:, 9 + k]
        cen.append(rad[:, None] * _normalize(radial + jitter * tangent) * dims / 2)
    C = torch.stack(cen, 1)  # (B, 4, 3)
    act = torch.arange(4, device=dev)[None] < n[:, None]  # (B, 4)
    diff = C[:, :, None] - C[:, None]
    dist = torch.sqrt(_dot(diff, diff))
    pair = act[:, :, None] & act[:, None] & ~torch.eye(4, dtype=torch.bool, device=dev)
    min_sep = torch.where(pair, dist, torch.full_like(dist, _BIG)).amin(2)  # (B, 4)
    m1 = m2 = dk = tmp = None
    for k in range(int(n.max())):
        q = p[:, 13 + 7 * k: 20 + 7 * k]
        rk = L * (0.13 + 0.10 * q[:, 0:3])
        # neighbours must not overlap much: largest semi-axis <= 0.42 x nearest-centre distance
        rk = rk * torch.clamp(0.42 * min_sep[:, k] / rk.amax(1), max=1.0)[:, None]
        dk = _ellipsoid(axes, C[:, k], _rotation(g[:, 4 + 4 * k: 8 + 4 * k]), rk, ~act[:, k], out=dk)
        if m1 is None:  # m1, m2: nearest and second-nearest component distance
            m1, m2, dk, tmp = dk, torch.full_like(dk, _BIG), None, torch.empty_like(dk)
        else:
            torch.minimum(m2, torch.maximum(m1, dk, out=tmp), out=m2)
            torch.minimum(m1, dk, out=m1)
    del dk, tmp
    fld, step = _field(seeds.field, shape, 1, 0.1 * L)
    amp = (L * (0.01 + 0.015 * p[:, 41]))[:, None, None, None, None]
    # A voxel is kept only if it is nearer to its own component than to any other by > 2 mm:
    # with 1-Lipschitz distances two 26-neighbours (<= sqrt(3) mm apart) can't then belong to
    # different components, so components never touch.
    gap = m2.sub_(m1).neg_().add_(2.0)
    body = m1.add_(_upsample((fld.clamp(-2.5, 2.5) * amp).float(), shape, step)[:, 0])
    body -= _col(_fit_level(body, -0.05 * L, 0.06 * L))
    return torch.maximum(body, gap, out=body), None


def _hollow(seeds: _Seeds, shape, dev):
    """Cyst / hollow organ: closed wall around a fluid cavity, fully inside the patch.

    Sized by the smallest patch side so that any rotation fits; on non-cubic patches the
    ellipsoid is stretched by sqrt(side / smallest side) along each axis, which still fits.
    """
    Lmin = float(min(shape))
    dims = torch.tensor(shape, dtype=_F64, device=dev)
    stretch = torch.sqrt(dims / Lmin)
    axes = _axes(shape, dev)
    p = seeds.uniform(16)
    c = (p[:, 0:3] - 0.5) * 0.06 * dims
    fld, step = _field(seeds.field, shape, 2, 0.2 * Lmin)
    amp = Lmin * (0.01 + 0.015 * p[:, 9])  # surface displacement, |.| <= 2.5 amp
    radii = Lmin * (0.24 + 0.09 * p[:, 3:6])
    # wall >= 1.7 mm everywhere: thicker than one voxel step of the (displaced, so slightly
    # steeper than 1-Lipschitz) distance, so no 6-connected leak can cross it; <= 0.35 r_min
    t0 = torch.clamp(torch.minimum(Lmin * (0.07 + 0.07 * p[:, 10]), 0.35 * radii.amin(1)), min=2.0)
    # the cavity must survive the thickest wall and the deepest dent: keep >= 1.2 mm of it
    radii = torch.maximum(radii, (1.3 * t0 + 2.5 * amp + 1.2)[:, None])
    coarse = torch.stack([fld[:, 0].clamp(-2.5, 2.5) * amp[:, None, None, None],
                          t0[:, None, None, None] * (1 + 0.25 * fld[:, 1]).clamp(0.85, 1.3)], 1)
    up = _upsample(coarse.float(), shape, step)
    rot = _rotation(seeds.normal(4))
    d_out = _ellipsoid(axes, c, rot, radii, stretch=stretch).add_(up[:, 0])
    d_cav = up[:, 1].add_(d_out)  # < 0 inside the cavity
    phi = torch.minimum(d_out.neg_(), d_cav, out=d_out).neg_()  # max(d_out, -d_cav)
    # only thicken (never thin) the wall: thinning could open the cavity
    level = _col(_fit_level(phi, 0.0, 0.5))
    return phi.sub_(level), d_cav.add_(level)


_FAMILY_FNS = {"blob": _blob, "tubular": _tubular, "multi": _multi, "hollow": _hollow}
_FAMILY_TAGS = (110, 120, 130, 140)  # rng tag T of each of FAMILIES (tag table above)


# ----------------------------------------------------------------------------- intensities
def _ramp(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in place: a linear ramp once the argument is measured in ramp widths."""
    return x.clamp_(0.0, 1.0)


def _render(keys, shape, fam, is_ct, out_w, cav_w, u):
    """Image (B, D, H, W) float32 in [0, 1].

    fam (B,) index into FAMILIES; is_ct (B,) bool; out_w (B, D, H, W) = 1 - soft foreground
    occupancy (overwritten: it becomes the image); cav_w (B_hollow, D, H, W) = 1 - soft cavity
    occupancy of the hollow rows (in batch order), or None when no row is hollow; u (B, 24)
    float64 the rows' appearance parameters (``rng.params(keys, 150, 24)``).

    Mixing is written ``v + (x - v) * (1 - m)`` so every step runs in place: fresh full-size
    tensors cost page faults on CPU, more than the arithmetic.
    """
    B = keys.shape[0]
    L = _scale(shape)
    u = u.unbind(1)
    vessel, wall = fam == FAMILIES.index("tubular"), fam == FAMILIES.index("hollow")

    def pick(ct, mr):
        return torch.where(is_ct, ct, mr)

    # --- tissue values, per episode: CT in HU, MR in a.u.
    a_ct, a_mr = 35 + 30 * u[0], 0.30 + 0.15 * u[0]  # main background tissue
    tA = pick(a_ct, a_mr)
    # second background tissue: CT fat; MR fat (bright, T1-like) or dark fibrous tissue
    tB = pick(-110 + 50 * u[1], torch.where(u[2] < 0.6, 0.80 + 0.2 * u[1], 0.10 + 0.1 * u[1]))
    # organs: mostly enhancing (brighter), sometimes hypodense in CT
    organ = pick(a_ct + torch.where(u[2] < 0.8, 25 + 70 * u[3], -(20 + 30 * u[3])),
                 a_mr + 0.10 + 0.25 * u[3])
    vess = pick(140 + 160 * u[3], a_mr + 0.30 + 0.40 * u[3])
    wallv = pick(a_ct + 20 + 50 * u[3], a_mr + 0.10 + 0.20 * u[3])
    fg = torch.where(vessel, vess, torch.where(wall, wallv, organ))
    fluid = pick(20 * u[4], torch.where(u[5] < 0.5, 0.9 + 0.3 * u[4], 0.05 + 0.1 * u[4]))
    # distractor organs look almost like the foreground: intensity alone can't separate them
    distr = fg + pick((u[6] - 0.5) * 30, (u[6] - 0.5) * 0.10)
    clutter = pick(350 + 650 * u[7], torch.where(u[8] < 0.5, 0.02 + 0.06 * u[7], 0.9 + 0.2 * u[7]))
    tex_amp = pick(6 + 9 * u[10], 0.02 + 0.03 * u[10])

    # --- background masks: ramps of thresholded random fields, ~1.5 voxels wide. The ramp
    # argument (N - thr) * sigma / 1.8 is affine in N (|grad N| ~ 1.22 / sigma), so it is formed
    # on the coarse grid; it is negated there to give 1 - mask, the weight of what lies below.
    s_part, s_dis, s_clu, s_ves = 0.2 * L, 0.12 * L, max(4.0, 0.08 * L), 0.25 * L
    thr_b = 1.0 * u[11]
    thr_d = 0.8 + 0.8 * u[12]
    thr_c = pick(1.6 + 0.8 * u[13], 1.9 + 0.8 * u[13])

    def col5(v):  # (B,) -> (B, 1, 1, 1) float64, for coarse fields
        return v[:, None, None, None]

    def field_seeds(k, sub):  # the background fields' generator seeds: substream ``sub`` of tag 151
        return rng.normal_seeds(rng.substream(rng.substream(k, sub), 151))

    def ramp_field(seeds, sigma, thr, sign):
        f, st = _field(seeds, shape, 1, sigma)
        arg = 0.5 + sign * (f[:, 0] - col5(thr)) * (sigma / 1.8)
        return _upsample(arg[:, None].float(), shape, st)[:, 0].clamp_(0, 1)

    def vessel_field(seeds, rad):  # 1 - mask of other vessels, where two fields are both ~0
        f, st = _field(seeds, shape, 2, s_ves)
        fv = _upsample((f * (s_ves / 1.22 / 1.5)).float(), shape, st)  # ~ distance / ramp width
        return fv[:, 0].mul_(fv[:, 0]).add_(fv[:, 1].mul_(fv[:, 1])).sqrt_().add_(_col(1 - rad)).clamp_(0, 1)

    img = ramp_field(field_seeds(keys, 0), s_part, thr_b, 1.0).mul_(_col(tB - tA)).add_(_col(tA))
    rad = 0.5 + (0.7 + 1.0 * u[18]) * L / 32 / 1.5  # distractor vessel radius in ramp widths
    if not vessel.any():
        keep = ramp_field(field_seeds(keys, 1), s_dis, thr_d, -1.0)
    elif vessel.all():
        keep = vessel_field(field_seeds(keys, 3), rad)
    else:
        org_rows, ves_rows = (~vessel).nonzero()[:, 0], vessel.nonzero()[:, 0]
        seeds = field_seeds(keys, torch.where(vessel, 3, 1))  # each row its own substream, one chain
        keep = torch.empty_like(img)
        keep[org_rows] = ramp_field(seeds[org_rows], s_dis, thr_d[org_rows], -1.0)
        keep[ves_rows] = vessel_field(seeds[ves_rows], rad[ves_rows])
    img.sub_(_col(distr)).mul_(keep).add_(_col(distr))
    del keep
    img.sub_(_col(clutter)).mul_(ramp_field(field_seeds(keys, 2), s_clu, thr_c, -1.0)).add_(_col(clutter))
    img = out_w.mul_(img.sub_(_col(fg))).add_(_col(fg))
    if cav_w is not None:  # only on the hollow rows: (x - v) * 1 + v is not exactly x
        rows = wall.nonzero()[:, 0]
        if len(rows) == B:
            img.sub_(_col(fluid)).mul_(cav_w).add_(_col(fluid))
        else:
            img[rows] = img[rows].sub_(_col(fluid[rows])).mul_(cav_w).add_(_col(fluid[rows]))
    ft, st = _noise(keys, 153, shape, 1, 3.0)
    img += _upsample((ft * col5(tex_amp)[:, None]).float(), shape, st)[:, 0]

    # --- bias field: CT acts on attenuation (HU + 1000), tiny; MR multiplicative, strong.
    # x * U + V, both formed on the coarse grid (V = 0 for MR).
    fb, sb = _noise(keys, 152, shape, 1, 0.5 * L)
    beta = col5(pick(0.005 + 0.01 * u[14], 0.12 + 0.2 * u[14]))[:, None]
    ct5 = col5(is_ct)[:, None]
    bias = _upsample(torch.cat([torch.where(ct5, 1 + beta * fb, (1 + beta * fb).clamp(min=0.4)),
                                torch.where(ct5, 1000 * beta * fb, torch.zeros_like(fb))], 1).float(), shape, sb)
    img.mul_(bias[:, 0]).add_(bias[:, 1])
    del bias

    # --- acquisition noise: CT Gaussian (HU); MR Rician |s + n_re + i n_im|, the imaginary
    # part reusing the (white) noise mirrored along W: independent voxelwise, ~4x cheaper
    nz = rng.normal(rng.substream(keys, 154), shape).mul_(_col(pick(6 + 14 * u[9], 0.025 + 0.035 * u[9])))
    img += nz
    if not is_ct.all():  # the magnitude of the MR rows only (a row's values are its own)
        mr = None if not is_ct.any() else (~is_ct).nonzero()[:, 0]
        re, im = (img, nz.flip(-1)) if mr is None else (img[mr], nz[mr].flip(-1))
        mag = (re * re).add_(im.mul_(im)).sqrt_()
        if mr is None:
            img = mag
        else:
            img[mr] = mag
        del re, im, mag
    del nz

    # --- to [0, 1]: CT soft-tissue window; MR 1st-99.5th percentile of the row
    q = _row_quantiles(img, (0.01, 0.995))
    lvl, win = 40 + 20 * u[16], 350 + 100 * u[17]
    lo = pick(lvl - win / 2, q[0].double())
    span = pick(win, (q[1] - q[0]).double().clamp(min=1e-6))
    return img.sub_(_col(lo)).div_(_col(span)).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- public API
def generate_phantoms(keys: torch.Tensor, shape: tuple[int, int, int], *, families=FAMILIES,
                      modalities=MODALITIES) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate one phantom per episode key.

    Args:
        keys: (B,) int64 episode keys (see ``svl_env.rng``); their device is the output's.
        shape: patch size (D, H, W) in voxels of 1 mm; each >= 8. Families keep their
            character (multi: >= 2 components, hollow: enclosed cavity) from 16 per side on;
            smaller patches still give valid, non-empty masks.
        families: non-empty subset of ``FAMILIES`` to draw from (uniformly, per key).
        modalities: non-empty subset of ``MODALITIES`` to draw from (uniformly, per key).

    Returns:
        image (B, D, H, W) float32 in [0, 1], truth (B, D, H, W) bool, on ``keys.device``.
        Row b depends only on ``keys[b]``, ``shape``, ``families`` and ``modalities``.
    """
    keys = rng.as_keys(keys, device=keys.device if torch.is_tensor(keys) else None)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8, got {shape}")
    families, modalities = tuple(families), tuple(modalities)
    if not families or any(f not in FAMILIES for f in families):
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {families}")
    if not modalities or any(m not in MODALITIES for m in modalities):
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
    B, dev = keys.shape[0], keys.device
    if B == 0:
        return (torch.zeros((0, *shape), device=dev), torch.zeros((0, *shape), dtype=torch.bool, device=dev))
    chunk = max(1, _CPU_CHUNK_VOXELS // (shape[0] * shape[1] * shape[2]))
    if dev.type == "cpu" and B > chunk:
        # Rows are independent (see Determinism), so a large CPU batch is made in a few
        # chunks: past 2**21 voxels the two-channel float32 fields cross glibc's 32 MB mmap
        # threshold and every one of them is fresh, page-faulted memory (16 x 64^3: one
        # batch 235 ms, two chunks of 8 rows 175 ms).
        parts = [generate_phantoms(keys[i:i + chunk], shape, families=families, modalities=modalities)
                 for i in range(0, B, chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    pick = (rng.params(keys, 100, 1)[:, 0] * len(families)).long().clamp(max=len(families) - 1)
    fam = torch.tensor([FAMILIES.index(f) for f in families], device=dev)[pick]
    pick = (rng.params(keys, 101, 1)[:, 0] * len(modalities)).long().clamp(max=len(modalities) - 1)
    is_ct = torch.tensor([m == "ct" for m in modalities], device=dev)[pick]

    seeds = _family_seeds(keys, torch.tensor(_FAMILY_TAGS, device=dev)[fam])
    phi = dcav = None
    for f, name in enumerate(FAMILIES):
        rows = (fam == f).nonzero()[:, 0]
        if not len(rows):
            continue
        whole = len(rows) == B
        ph, dc = _FAMILY_FNS[name](seeds if whole else seeds.take(rows), shape, dev)
        if whole:
            phi = ph
        else:
            if phi is None:
                phi = torch.empty((B, *shape), device=dev)
            phi[rows] = ph
        if dc is not None:  # hollow rows only
            dcav = dc
        del ph, dc

    # never empty (tiny patches, multi's carved gaps): the deepest voxel is always inside
    floor = phi.reshape(B, -1).amin(1).clamp(min=0) + 1e-3
    if bool((floor > 1e-3).any()):  # (x - 0 is exact, so skipping it changes no other row)
        phi.sub_(torch.where(floor > 1e-3, floor, torch.zeros_like(floor))[:, None, None, None])
    truth = phi < 0
    # Partial volume: the fraction of a voxel's box inside a plane at signed distance phi is
    # clamp(0.5 - phi, 0, 1); a per-episode width 1.0-1.6 mm adds some scanner blur. Passed on
    # as 1 - occupancy (clamp(0.5 + phi / width)), the weight of what lies outside.
    look = rng.params(keys, 150, 24).double()  # appearance: this width and _render's parameters
    width = _col(1.0 + 0.6 * look[:, 23])
    out_w = _ramp(phi.div_(width).add_(0.5))
    cav_w = None if dcav is None else _ramp(dcav.div_(width[fam == FAMILIES.index("hollow")]).add_(0.5))
    # (a family's field may be a view into a wider buffer: hand out a plain tensor)
    return _render(keys, shape, fam, is_ct, out_w, cav_w, look).contiguous(), truth
