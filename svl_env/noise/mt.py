"""``"mt"`` -- MT-Noise (MTCL, Xu et al., IEEE TMI 2022).

Their generator: side = randint(3, 15), cube ``np.ones((s, s, s))``, scipy binary dilation or
erosion with p = 0.5. Here: dilation (p = ``p_dilate``) or erosion by a cube of side
s ~ U{side_min .. side_max} voxels. Odd s = (s-1)/2 3x3x3 steps; even s adds one 2x2x2 step
(max over {i, i+1} per axis: the half-voxel asymmetry of any even-sized cube). Rows are
batched by iterating 3x3x3 steps and keeping each row's result at its own count.

*Default sides 2..4 instead of 3..15*: MTCL corrupts whole LA volumes (crops of ~112x112x80
around an atrium 40-80 voxels across); the project's 32^3 patches hold structures 3-25 voxels
across (vessels of radius 1.5-4, thin walls), ~3.5x smaller, where the published sides erase
most of them (mean Dice 0.27, 1 mask in 4 wiped out). Shrinking 3..15 by that factor (~32/112)
gives sides ~1..4; side 1 is the identity, hence 2..4 -- the published error relative to the
structure size. ``preset=literature`` = 3..15 (for structures of LA's size, e.g. whole volumes).
"""

from __future__ import annotations

import torch

from .. import rng
from .morphology import dilate_cube, dilate_half, xor_rows
from .protocol import NoiseProtocol, Param

TAG = 11  # rng tag under the noise keys


def apply(truth: torch.Tensor, keys: torch.Tensor, p: dict) -> torch.Tensor:
    """truth (b, D, H, W) bool, noise keys (b,) int64, params -> noisy (b, D, H, W) bool."""
    u = rng.params(keys, TAG, 2)
    lo, hi = p["side_min"], p["side_max"]
    side = (lo + torch.floor(u[:, 0] * (hi - lo + 1))).long().clamp(lo, hi)
    erode = u[:, 1] >= p["p_dilate"]
    y = xor_rows(truth, erode)  # erosion = dilation of the complement
    # Each morphology step runs only on the rows that still need it (the rest keep their
    # result), as a row alone would: a batch does no more work than its rows one by one.
    even = (side % 2 == 0).nonzero()[:, 0]
    if len(even):
        y = y.clone()
        y[even] = dilate_half(y[even])
    steps = (side - 1) // 2
    out = y.clone()
    rows = (steps >= 1).nonzero()[:, 0]
    cur, k = y[rows], 1
    while len(rows):
        cur = dilate_cube(cur)
        done = steps[rows] == k
        out[rows[done]] = cur[done]
        rows, cur, k = rows[~done], cur[~done], k + 1
    return xor_rows(out, erode)


def _check(p: dict) -> None:
    if p["side_min"] > p["side_max"]:
        raise ValueError(f"noise 'mt': side_min={p['side_min']} > side_max={p['side_max']}")


PROTOCOL = NoiseProtocol(
    name="mt",
    apply=apply,
    # MTCL's morphological noise, sides scaled to 32^3 patches (module doc): published 3..15.
    params={
        "side_min": Param("int", 2, 1, 31, "smallest cube side, voxels"),
        "side_max": Param("int", 4, 1, 31, "largest cube side, voxels"),
        "p_dilate": Param("float", 0.5, 0.0, 1.0, "probability of dilation (else erosion)"),
    },
    presets={"literature": {"side_min": 3, "side_max": 15}},  # MTCL on LA
    tag=TAG,
    dice_range=(0.52, 0.72),
    dice_measured=(0.643, 0.21, 0.86, 0.814),
    check=_check,
    doc="MT-Noise (MTCL, Xu et al., IEEE TMI 2022): dilation or erosion by a random cube",
)
