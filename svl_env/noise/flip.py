"""``"flip"`` -- random flips of boundary voxels.

Every voxel within ``width`` 6-connected steps of the other label (a band 2*width voxels thick
around the surface) flips with probability ``p``. No literature source: speckle that local
filters (median, majority) can undo, a sanity baseline for refiners.
"""

from __future__ import annotations

import torch

from .. import rng
from .morphology import dilate_cross
from .protocol import NoiseProtocol, Param

TAG = 14  # rng tag under the noise keys


def apply(truth: torch.Tensor, keys: torch.Tensor, p: dict) -> torch.Tensor:
    """truth (b, D, H, W) bool, noise keys (b,) int64, params -> noisy (b, D, H, W) bool."""
    inner, outer = truth, ~truth
    for _ in range(p["width"]):
        inner, outer = dilate_cross(inner), dilate_cross(outer)
    band = inner & outer  # within `width` 6-steps of the other label, on either side
    u = rng.uniform(rng.substream(keys, TAG), tuple(truth.shape[1:]))
    return truth ^ (band & (u < p["p"]))


PROTOCOL = NoiseProtocol(
    name="flip",
    apply=apply,
    params={
        "width": Param("int", 1, 1, 64, "half-width of the boundary band, voxels (6-connected steps)"),
        "p": Param("float", 0.3, 0.0, 1.0, "flip probability of a band voxel"),
    },
    presets={"literature": {}},  # no literature source: the defaults
    tag=TAG,
    dice_range=(0.82, 0.90),
    dice_measured=(0.862, 0.79, 0.93, 0.928),
    doc="boundary speckle (no literature source): band voxels flip with probability p",
)
