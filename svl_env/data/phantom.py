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
- ``folded``: cortex-like -- a ribbon 2-4 mm thick (fixed in mm, not scaled with the patch) on
  the outer side of a strongly folded surface: the zero set of a tilted plane plus a smooth
  random field (correlation width min(4.5 mm, L/5)) whose gradient is 2.5-5x the plane's, so
  it folds into gyri with finger-like cores and narrow sulci; the ribbon is 0 <= d < T with d
  the field divided by its gradient norm (central differences: a first-order signed
  distance). The core it wraps ("white matter", d < 0) is rendered as its own tissue next to
  the foreground's intensity and is *not* foreground. Typically > 90 % of its voxels lie
  within 2 voxels of the background; a 64 x 64 x 128 patch shows one large folded sheet plus a
  few small closed ones. Opt-in: not in ``DEFAULT_FAMILIES``.

``DEFAULT_FAMILIES`` (what ``generate_phantoms`` draws from unless told) are the first four, so
the family drawn for a key -- and every seeded result made before ``folded`` existed -- is
unchanged; adding ``folded`` changed no other family's output bit.

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
  ``folded``'s core: 8-25 HU darker than the ribbon.
- ``mr``: a.u.; strong multiplicative bias (+-12-32 %); Rician (magnitude) noise; 1st-99.5th
  percentile normalisation to [0, 1]; foreground moderately brighter than the main tissue;
  ``folded``'s core 0.08-0.20 brighter than the ribbon (T1-like, 70 % of the episodes) or
  0.08-0.16 darker, so one intensity threshold takes both tissues or neither.

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

Code: ``phantom_fields`` (grids, random fields, upsampling, row quantiles), ``phantom_shapes``
(the families' distance fields), ``phantom_render`` (intensities); this module draws the
family and modality of each row and puts them together.
"""

# rng tags of this module (all >= 100, so they never meet other modules' tags). A family tag T
# gives uniforms ``rng.params(keys, T, n)`` and normals ``rng.normal(substream(keys, T), (n,))``
# (different generator seeds, so the two never share numbers):
#   100 family choice               101 modality choice
#   110 blob parameters             111 blob surface-displacement field
#   120 tubular parameters          121 tubular bend (2 per vessel) and radius fields
#   130 multi parameters            131 multi surface-displacement field
#   140 hollow parameters           141 hollow displacement and wall-thickness fields
#   150 intensity parameters (columns 19-20: folded core contrast; 23: partial-volume width)
#   151 background fields, under substreams 0-3 of the key: tissue partition, distractor
#       organs, clutter, distractor vessels
#   152 bias field                  153 fine texture field
#   154 acquisition noise
#   160 folded parameters (uniforms: centre, fold strength, thickness; normals: plane normal)
#   161 folded folding field

from __future__ import annotations

import torch

from .. import rng
from .phantom_fields import col
from .phantom_render import ramp, render
from .phantom_shapes import DEFAULT_FAMILIES, FAMILIES, FAMILY_FNS, family_seeds

__all__ = ["DEFAULT_FAMILIES", "FAMILIES", "MODALITIES", "generate_phantoms"]

MODALITIES = ("mr", "ct")

_CPU_CHUNK_VOXELS = 1 << 21  # largest batch generated at once on CPU (generate_phantoms)
_FAMILY_TAGS = (110, 120, 130, 140, 160)  # rng tag T of each of FAMILIES (tag table above)


def generate_phantoms(keys: torch.Tensor, shape: tuple[int, int, int], *, families=DEFAULT_FAMILIES,
                      modalities=MODALITIES) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate one phantom per episode key.

    Args:
        keys: (B,) int64 episode keys (see ``svl_env.rng``); their device is the output's.
        shape: patch size (D, H, W) in voxels of 1 mm; each >= 8. Families keep their
            character (multi: >= 2 components, hollow: enclosed cavity) from 16 per side on;
            smaller patches still give valid, non-empty masks.
        families: non-empty subset of ``FAMILIES`` to draw from (uniformly, per key);
            default ``DEFAULT_FAMILIES`` (all but ``folded``).
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

    seeds = family_seeds(keys, torch.tensor(_FAMILY_TAGS, device=dev)[fam])
    inner = (fam == FAMILIES.index("hollow")) | (fam == FAMILIES.index("folded"))  # rows with an inner tissue
    inner_pos = inner.long().cumsum(0) - 1  # a row's place among them
    phi = dcav = None
    for f, name in enumerate(FAMILIES):
        rows = (fam == f).nonzero()[:, 0]
        if not len(rows):
            continue
        whole = len(rows) == B
        ph, dc = FAMILY_FNS[name](seeds if whole else seeds.take(rows), shape, dev)
        if whole:
            phi = ph
        else:
            if phi is None:
                phi = torch.empty((B, *shape), device=dev)
            phi[rows] = ph
        if dc is not None:  # hollow and folded rows: the inner tissue's field, in batch order
            if whole:
                dcav = dc
            else:
                if dcav is None:
                    dcav = torch.empty((int(inner.sum()), *shape), device=dev)
                dcav[inner_pos[rows]] = dc
        del ph, dc

    # never empty (tiny patches, multi's carved gaps): the deepest voxel is always inside
    floor = phi.reshape(B, -1).amin(1).clamp(min=0) + 1e-3
    if bool((floor > 1e-3).any()):  # (x - 0 is exact, so skipping it changes no other row)
        phi.sub_(torch.where(floor > 1e-3, floor, torch.zeros_like(floor))[:, None, None, None])
    truth = phi < 0
    # Partial volume: the fraction of a voxel's box inside a plane at signed distance phi is
    # clamp(0.5 - phi, 0, 1); a per-episode width 1.0-1.6 mm adds some scanner blur. Passed on
    # as 1 - occupancy (clamp(0.5 + phi / width)), the weight of what lies outside.
    look = rng.params(keys, 150, 24).double()  # appearance: this width and render's parameters
    width = col(1.0 + 0.6 * look[:, 23])
    out_w = ramp(phi.div_(width).add_(0.5))
    cav_w = None if dcav is None else ramp(dcav.div_(width[inner]).add_(0.5))
    # (a family's field may be a view into a wider buffer: hand out a plain tensor)
    return render(keys, shape, fam, is_ct, out_w, cav_w, look).contiguous(), truth
