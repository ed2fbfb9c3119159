"""The phantom shape families: signed distance-like fields ``phi`` (mm, negative inside).

See ``phantom`` for the families and the rng tags they draw from; each family function takes
the rows' ``Seeds`` and returns (phi (B, D, H, W) float32, cavity field or None).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import rng
from .phantom_fields import BIG, F64, col, fit_level, grid_axes, plane, random_field, structure_scale, upsample


class Seeds(NamedTuple):
    """Generator seeds (B,) of a family's three draws (see the tag table): its parameters
    (``rng.params(keys, T, n)``), its Gaussians (``rng.normal(substream(keys, T), (n,))``) and
    its noise field (``keyed_field(keys, T + 1, ...)``)."""

    params: torch.Tensor
    gauss: torch.Tensor
    field: torch.Tensor

    def take(self, rows: torch.Tensor) -> "Seeds":
        return Seeds(*(s[rows] for s in self))

    def uniform(self, n: int) -> torch.Tensor:
        """(B, n) float64 U[0, 1) per-episode parameters."""
        return rng.uniform_seeded(self.params, (n,)).double()

    def normal(self, n: int) -> torch.Tensor:
        """(B, n) float64 standard normals per episode (directions, rotations)."""
        return rng.normal_seeded(self.gauss, (n,)).double()


def family_seeds(keys: torch.Tensor, tags: torch.Tensor) -> Seeds:
    """``Seeds`` of every row, each row with its own family's tag T (tags (B,) int64): a
    mixed batch derives them in one batched hash chain instead of one chain per family."""
    k = rng.substream(keys, tags)
    return Seeds(rng.hash32(k), rng.normal_seeds(k), rng.normal_seeds(rng.substream(keys, tags + 1)))


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
    pzx = ((M[:, 2, 2, None] * X[2] * X[2])[:, None, :]
           + 2 * M[:, 0, 2, None, None] * X[0][:, :, None] * X[2][:, None, :])
    pyx = 2 * M[:, 1, 2, None, None] * X[1][:, :, None] * X[2][:, None, :]
    if inactive is not None:
        pyx = pyx + (inactive.to(F64) * BIG)[:, None, None]
    q = torch.add(pzy.float()[:, :, :, None], pzx.float()[:, :, None, :], out=out)
    q += pyx.float()[:, None]
    return q.clamp_(min=0).sqrt_().sub_(col(rmin))


def _smin_(a: torch.Tensor, b: torch.Tensor, k: float, tmp: torch.Tensor) -> torch.Tensor:
    """Polynomial smooth minimum (blend width k mm) written into ``a``: lobes merge through a
    rounded neck instead of a crease. ``tmp`` is scratch of a's shape."""
    h = torch.sub(a, b, out=tmp).abs_().neg_().add_(k).clamp_(min=0)
    torch.minimum(a, b, out=a)
    return a.sub_(h.mul_(h).mul_(0.25 / k))


# ----------------------------------------------------------------------------- families
def _blob(seeds: Seeds, shape, dev):
    """Lumpy organ: smooth union of a main ellipsoid and 1-2 lobes, noise-displaced surface."""
    L = structure_scale(shape)
    dims = torch.tensor(shape, dtype=F64, device=dev)
    axes = grid_axes(shape, dev)
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
    fld, step = random_field(seeds.field, shape, 1, 0.16 * L)
    amp = L * (0.025 + 0.035 * p[:, 28:29])
    phi += upsample((fld * amp[:, :, None, None, None]).float(), shape, step)[:, 0]
    return phi.sub_(col(fit_level(phi, -0.1 * L, 0.1 * L))), None


def _tubular(seeds: Seeds, shape, dev):
    """Curved vessels: each centre line is where two noise-bent orthogonal planes meet."""
    L = structure_scale(shape)
    dims = torch.tensor(shape, dtype=F64, device=dev)
    p = seeds.uniform(32)
    n_tubes = 2 + (p[:, 0] >= 0.5).long()
    n_max = int(n_tubes.max())
    g = seeds.normal(9)
    fld, step = random_field(seeds.field, shape, 7, 0.22 * L)
    cax = grid_axes(shape, dev, step)
    chans, radii = [], []
    # radius varies along the vessels: |g| < r_k * rf  <=>  |g / rf| < r_k, and dividing the
    # coarse fields by rf keeps everything affine-in-the-field for upsampling
    inv_rf = 1 / (1 + 0.2 * fld[:, 6]).clamp(min=0.6)
    for k in range(n_max):
        q = p[:, 1 + 9 * k: 10 + 9 * k]
        t = _normalize(g[:, 3 * k: 3 * k + 3])  # vessel direction
        helper = torch.zeros_like(t)
        helper[:, 0] = (t[:, 0].abs() < 0.9).to(F64)
        helper[:, 1] = 1 - helper[:, 0]
        n1 = _normalize(_cross(t, helper))
        n2 = _cross(t, n1)
        c = (q[:, 2:5] - 0.5) * 0.5 * dims
        a = (L * (0.06 + 0.10 * q[:, 5]))[:, None, None, None]
        far = (n_tubes <= k).to(F64)[:, None, None, None] * BIG
        # plane offsets + bends, affine in the noise, so they survive upsampling exactly
        chans.append((plane(cax, n1, c) + a * fld[:, 2 * k] + far) * inv_rf)
        chans.append((plane(cax, n2, c) + a * fld[:, 2 * k + 1]) * inv_rf)
        radii.append(torch.clamp((1.5 + 2.5 * q[:, 6]) * L / 32, min=1.0))
    up = upsample(torch.stack(chans, 1).float(), shape, step)
    phi = None
    for k in range(n_max):
        g1, g2 = up[:, 2 * k], up[:, 2 * k + 1]
        dk = g1.mul_(g1).add_(g2.mul_(g2)).sqrt_().sub_(col(radii[k]))
        phi = dk if phi is None else torch.minimum(phi, dk, out=phi)
    return phi.sub_(col(fit_level(phi, -0.5, 1.5 * L / 32))), None


def _multi(seeds: Seeds, shape, dev):
    """2-4 separate small organs on a tilted ring around the centre, kept apart by a gap."""
    L = structure_scale(shape)
    dims = torch.tensor(shape, dtype=F64, device=dev)
    axes = grid_axes(shape, dev)
    p = seeds.uniform(48)
    n = 2 + (p[:, 0] * 3).floor().clamp(max=2).long()
    g = seeds.normal(24)
    frame = _rotation(g[:, 0:4])
    e1, e2 = frame[:, :, 0], frame[:, :, 1]
    # k-th of n directions on the ring (exact constants per n), jittered along the ring
    ang = [[2 * math.pi * k / m for k in range(4)] for m in (2, 3, 4)]
    cos_t = torch.tensor([[math.cos(a) for a in row] for row in ang], dtype=F64, device=dev)[n - 2]
    sin_t = torch.tensor([[math.sin(a) for a in row] for row in ang], dtype=F64, device=dev)[n - 2]
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
    min_sep = torch.where(pair, dist, torch.full_like(dist, BIG)).amin(2)  # (B, 4)
    m1 = m2 = dk = tmp = None
    for k in range(int(n.max())):
        q = p[:, 13 + 7 * k: 20 + 7 * k]
        rk = L * (0.13 + 0.10 * q[:, 0:3])
        # neighbours must not overlap much: largest semi-axis <= 0.42 x nearest-centre distance
        rk = rk * torch.clamp(0.42 * min_sep[:, k] / rk.amax(1), max=1.0)[:, None]
        dk = _ellipsoid(axes, C[:, k], _rotation(g[:, 4 + 4 * k: 8 + 4 * k]), rk, ~act[:, k], out=dk)
        if m1 is None:  # m1, m2: nearest and second-nearest component distance
            m1, m2, dk, tmp = dk, torch.full_like(dk, BIG), None, torch.empty_like(dk)
        else:
            torch.minimum(m2, torch.maximum(m1, dk, out=tmp), out=m2)
            torch.minimum(m1, dk, out=m1)
    del dk, tmp
    fld, step = random_field(seeds.field, shape, 1, 0.1 * L)
    amp = (L * (0.01 + 0.015 * p[:, 41]))[:, None, None, None, None]
    # A voxel is kept only if it is nearer to its own component than to any other by > 2 mm:
    # with 1-Lipschitz distances two 26-neighbours (<= sqrt(3) mm apart) can't then belong to
    # different components, so components never touch.
    gap = m2.sub_(m1).neg_().add_(2.0)
    body = m1.add_(upsample((fld.clamp(-2.5, 2.5) * amp).float(), shape, step)[:, 0])
    body -= col(fit_level(body, -0.05 * L, 0.06 * L))
    return torch.maximum(body, gap, out=body), None


def _hollow(seeds: Seeds, shape, dev):
    """Cyst / hollow organ: closed wall around a fluid cavity, fully inside the patch.

    Sized by the smallest patch side so that any rotation fits; on non-cubic patches the
    ellipsoid is stretched by sqrt(side / smallest side) along each axis, which still fits.
    """
    Lmin = float(min(shape))
    dims = torch.tensor(shape, dtype=F64, device=dev)
    stretch = torch.sqrt(dims / Lmin)
    axes = grid_axes(shape, dev)
    p = seeds.uniform(16)
    c = (p[:, 0:3] - 0.5) * 0.06 * dims
    fld, step = random_field(seeds.field, shape, 2, 0.2 * Lmin)
    amp = Lmin * (0.01 + 0.015 * p[:, 9])  # surface displacement, |.| <= 2.5 amp
    radii = Lmin * (0.24 + 0.09 * p[:, 3:6])
    # wall >= 1.7 mm everywhere: thicker than one voxel step of the (displaced, so slightly
    # steeper than 1-Lipschitz) distance, so no 6-connected leak can cross it; <= 0.35 r_min
    t0 = torch.clamp(torch.minimum(Lmin * (0.07 + 0.07 * p[:, 10]), 0.35 * radii.amin(1)), min=2.0)
    # the cavity must survive the thickest wall and the deepest dent: keep >= 1.2 mm of it
    radii = torch.maximum(radii, (1.3 * t0 + 2.5 * amp + 1.2)[:, None])
    coarse = torch.stack([fld[:, 0].clamp(-2.5, 2.5) * amp[:, None, None, None],
                          t0[:, None, None, None] * (1 + 0.25 * fld[:, 1]).clamp(0.85, 1.3)], 1)
    up = upsample(coarse.float(), shape, step)
    rot = _rotation(seeds.normal(4))
    d_out = _ellipsoid(axes, c, rot, radii, stretch=stretch).add_(up[:, 0])
    d_cav = up[:, 1].add_(d_out)  # < 0 inside the cavity
    phi = torch.minimum(d_out.neg_(), d_cav, out=d_out).neg_()  # max(d_out, -d_cav)
    # only thicken (never thin) the wall: thinning could open the cavity
    level = col(fit_level(phi, 0.0, 0.5))
    return phi.sub_(level), d_cav.add_(level)


def _central_grad_norm(psi: torch.Tensor) -> torch.Tensor:
    """|grad psi| (per mm) of (B, D, H, W) by central differences (one-sided at the faces):
    only subtractions, halvings, squares, a sum written out and a sqrt, all exact per voxel."""
    out = None
    for ax in (1, 2, 3):
        n = psi.shape[ax]
        d = torch.empty_like(psi)
        d.narrow(ax, 1, n - 2).copy_(psi.narrow(ax, 2, n - 2) - psi.narrow(ax, 0, n - 2)).mul_(0.5)
        d.narrow(ax, 0, 1).copy_(psi.narrow(ax, 1, 1) - psi.narrow(ax, 0, 1))
        d.narrow(ax, n - 1, 1).copy_(psi.narrow(ax, n - 1, 1) - psi.narrow(ax, n - 2, 1))
        d.mul_(d)
        out = d if out is None else out.add_(d)
    return out.sqrt_()


def _folded(seeds: Seeds, shape, dev):
    """Cortex-like folded ribbon: a sheet of thickness 2-4 mm on the outer side of a strongly
    folded "white matter" surface; the white matter (the cavity field, rendered as its own
    tissue) is not foreground.

    The surface is the zero set of psi = a tilted plane + a smooth random field whose
    gradient is 2.5-5x the plane's, so it folds into gyri with finger-like white-matter cores
    and narrow sulci. psi / |grad psi| (central differences) is its first-order signed
    distance d (mm): white matter d < 0, ribbon 0 <= d < T. Fold scale and thickness are in mm
    (anatomy has a scale: the patch size sets how many folds are seen), with the fold scale
    kept below L / 5 so small patches still show folds.
    """
    L = structure_scale(shape)
    dims = torch.tensor(shape, dtype=F64, device=dev)
    p = seeds.uniform(16)
    sigma = min(4.5, 0.2 * L)  # correlation width (mm) of the folding field
    fld, step = random_field(seeds.field, shape, 1, sigma)
    cax = grid_axes(shape, dev, step)
    n = _normalize(seeds.normal(3))
    c = (p[:, 0:3] - 0.5) * 0.3 * dims
    # plane gradient 1, field gradient ~1.22 / sigma per unit: their ratio sets how strongly
    # the surface folds (a fixed multiple of the field's gradient, whatever sigma)
    fold = ((2.5 + 2.5 * p[:, 3]) * sigma / 1.22)[:, None, None, None]
    psi = upsample((plane(cax, n, c) + fold * fld[:, 0])[:, None].float(), shape, step)[:, 0]
    grad = _central_grad_norm(psi).clamp_(min=1e-3 * float(fold.min()))
    d = psi.div_(grad)
    del grad
    T = col(2.0 + 2.0 * p[:, 4])  # ribbon thickness, mm
    half = T * 0.5
    phi = torch.sub(d, half).abs_().sub_(half)  # |d - T/2| - T/2: < 0 in the ribbon
    # level shift only by a fraction of a voxel: the ribbon must stay a thin sheet
    level = col(fit_level(phi, -0.5, 0.75))
    return phi.sub_(level), d.add_(level)  # the white matter shrinks as the ribbon thickens


FAMILY_FNS = {"blob": _blob, "tubular": _tubular, "multi": _multi, "hollow": _hollow, "folded": _folded}
FAMILIES = tuple(FAMILY_FNS)
# what a caller gets without naming families: the four older ones, so seeded draws made before
# ``folded`` existed are unchanged (``folded`` is opt-in)
DEFAULT_FAMILIES = ("blob", "tubular", "multi", "hollow")
