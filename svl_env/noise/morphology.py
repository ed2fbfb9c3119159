"""Morphology on bool batches (B, D, H, W), shared by the noise protocols.

Boolean shifts, separable for the cube: one 3x3x3 step equals ``max_pool3d(x, 3, 1, 1)``
(dilation) / ``-max_pool3d(-x, 3, 1, 1)`` (erosion) exactly (tested), at 1/25 of max_pool3d's
CPU time; erosion is dilation of the complement. Voxels outside the patch are ignored (as in
max_pool3d's implicit padding), so a structure cut by the patch edge neither grows nor erodes
from the edge. Gaussian smoothing replicates the border.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["dilate_cross", "dilate_cube", "dilate_half", "gaussian_smooth", "per_row", "xor_rows"]


@functools.lru_cache(maxsize=32)
def _w_keep(shape: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (D*H*W,) masks of the voxels with w > 0 and with w < W - 1."""
    w = torch.arange(shape[0] * shape[1] * shape[2], device=device) % shape[2]
    return w != 0, w != shape[2] - 1


def _or_shift(out: torch.Tensor, src: torch.Tensor, dim: int, forward: bool = True, backward: bool = True):
    """out |= src shifted by +1 (forward: out[i] |= src[i-1]) and/or -1 along dim, no wrap-around.

    Along the last axis the shift is done on the flattened rows with a mask of the first / last
    column (one long contiguous loop instead of B*D*H loops of W - 1: 5x faster on CPU).
    """
    n = src.shape[dim]
    if n <= 1:
        return out
    if dim != 3:
        if forward:
            out.narrow(dim, 1, n - 1).logical_or_(src.narrow(dim, 0, n - 1))
        if backward:
            out.narrow(dim, 0, n - 1).logical_or_(src.narrow(dim, 1, n - 1))
        return out
    b = src.shape[0]
    flat_out, flat_src = out.view(b, -1), src.contiguous().view(b, -1)
    not_first, not_last = _w_keep(tuple(src.shape[1:]), src.device)
    if forward:
        flat_out[:, 1:].logical_or_(flat_src[:, :-1] & not_first[1:])
    if backward:
        flat_out[:, :-1].logical_or_(flat_src[:, 1:] & not_last[:-1])
    return out


def xor_rows(m: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """m ^ flags[b] per row. On 8-byte-aligned rows it xors packed int64 words (10x faster
    than a broadcast bool xor on CPU); bools are bytes 0/1, so 0x0101.. flips every voxel."""
    b = m.shape[0]
    n = m[0].numel() if b else 0
    if n % 8 or not m.is_contiguous() or m.storage_offset() % 8:
        return m ^ per_row(flags)
    word = torch.where(flags, 0x0101010101010101, 0).view(b, 1)
    return (m.view(b, -1).view(torch.int64) ^ word).view(torch.bool).view(m.shape)


def dilate_cube(y: torch.Tensor) -> torch.Tensor:
    """One 3x3x3 dilation (== max_pool3d(y, 3, 1, 1)), separable."""
    for dim in (1, 2, 3):
        y = _or_shift(y.clone(), y, dim)
    return y


def dilate_half(y: torch.Tensor) -> torch.Tensor:
    """One 2x2x2 dilation: out[i] = max(y[i], y[i+1]) per axis."""
    for dim in (1, 2, 3):
        y = _or_shift(y.clone(), y, dim, forward=False)
    return y


def dilate_cross(y: torch.Tensor) -> torch.Tensor:
    """One 6-connected dilation (3x3x3 cross)."""
    out = y.clone()
    for dim in (1, 2, 3):
        _or_shift(out, y, dim)
    return out


def per_row(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting over volumes."""
    return v.view(-1, 1, 1, 1)


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, D, H, W) float, radius ceil(3 sigma), border replicated
    (scipy's mode='nearest'). Weighted sums of shifted slices: on CPU 20x faster than conv3d."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
    total = sum(taps)
    y = F.pad(x.unsqueeze(1), (r, r, r, r, r, r), mode="replicate").squeeze(1)
    for dim, n in zip((1, 2, 3), x.shape[1:]):
        out = y.narrow(dim, 0, n) * (taps[0] / total)
        for i in range(1, 2 * r + 1):
            out.add_(y.narrow(dim, i, n), alpha=taps[i] / total)
        y = out
    return y

