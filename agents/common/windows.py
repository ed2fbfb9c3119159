"""Overlapping windows over a volume: origins on a regular grid, and sliding-window inference.

The last window of each axis sits flush with the volume's end; volumes smaller than a window
are padded. Used by refinement (``agents.eval.refine``) and by the staged pipeline's
segmentation (``agents.staged.segment``). ``flip_mean`` averages a volume-to-volume function
over flipped copies of its inputs (test-time flip averaging).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

DEFAULT_WINDOW = 64

#: ``flip_mean``'s flipped copies, by count: the identity, then the three 180-degree rotations
#: about one axis (each flips the other two axes; with the identity they form a group, so no
#: axis is favoured), then the single-axis flips and the flip of all three (all 8). Flips
#: only: unlike axis permutations they keep each axis's spacing, so anisotropic volumes are
#: never transposed.
FLIPS = {1: [()], 2: [(), (0, 1, 2)], 4: [(), (1, 2), (0, 2), (0, 1)],
         8: [(), (1, 2), (0, 2), (0, 1), (0,), (1,), (2,), (0, 1, 2)]}


def grid_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Patch origins along one axis: stride ``patch·(1-overlap)``, last patch flush with the end."""
    if size <= patch:
        return [0]
    stride = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def as_triple(p, what: str = "window") -> tuple[int, int, int]:
    if isinstance(p, (int, np.integer)):
        return (int(p),) * 3
    t = tuple(int(v) for v in p)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{what} must be a positive int or 3 positive ints, got {p!r}")
    return t  # type: ignore[return-value]


def window_starts(shape, window, overlap: float) -> list[tuple[int, int, int]]:
    """Window origins covering ``shape`` (each axis at least one window)."""
    w = as_triple(window)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    axes = [grid_starts(max(s, p), p, overlap) for s, p in zip(shape, w)]
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


@torch.no_grad()
def sliding_window(fn: Callable[[torch.Tensor, list[tuple[slice, slice, slice]]], torch.Tensor],
                   volumes: list[np.ndarray], *, window=DEFAULT_WINDOW, overlap: float = 0.25, batch_size: int = 2,
                   out_channels: int = 1, device="cpu", pad_modes=None, progress=None,
                   shrink: bool = True) -> np.ndarray:
    """Run ``fn`` over windows of a volume and average the outputs.

    volumes: list of (D, H, W) arrays (image first; masks, ...) cut at the same windows and
    stacked as channels: ``fn(x (N, len(volumes), *win), slices) -> (N, out_channels, *win)``.
    ``pad_modes``: per volume "edge" (default for the first) or "constant" (zeros; default
    for the others). ``shrink``: a window larger than the volume shrinks to it (a fully
    convolutional ``fn``); False pads the volume to the window instead (a policy that acts on
    the patch size it was trained on). Returns the mean output (out_channels, D, H, W) float32.
    """
    shape = volumes[0].shape
    win = tuple(min(w, s) for w, s in zip(as_triple(window), shape)) if shrink else as_triple(window)
    padded = tuple(max(s, w) for s, w in zip(shape, win))
    modes = list(pad_modes) if pad_modes is not None else ["edge"] + ["constant"] * (len(volumes) - 1)
    dev = torch.device(device)
    arrs = []
    for v, mode in zip(volumes, modes):
        v = np.asarray(v, dtype=np.float32)
        pad = [(0, p - s) for s, p in zip(shape, padded)]
        if any(p[1] for p in pad):
            v = np.pad(v, pad, mode=mode)
        arrs.append(torch.as_tensor(v, device=dev))
    vol = torch.stack(arrs)  # (C, *padded)
    acc = torch.zeros((out_channels, *padded), device=dev)
    cnt = torch.zeros(padded, device=dev)
    starts = window_starts(padded, win, overlap)
    for i in range(0, len(starts), max(1, int(batch_size))):
        chunk = starts[i:i + batch_size]
        sl = [(slice(a, a + win[0]), slice(b, b + win[1]), slice(c, c + win[2])) for a, b, c in chunk]
        x = torch.stack([vol[(slice(None),) + s] for s in sl])
        y = fn(x, sl)
        for j, s in enumerate(sl):
            acc[(slice(None),) + s] += y[j]
            cnt[s] += 1
        if progress is not None:
            progress.update(len(chunk))
    out = acc / cnt.clamp_min(1)
    return out[:, : shape[0], : shape[1], : shape[2]].cpu().numpy()


def flip_mean(fn: Callable[[list[np.ndarray]], np.ndarray], volumes: list[np.ndarray], flips: int = 1) -> np.ndarray:
    """The mean of ``fn`` over ``flips`` flipped copies of ``volumes`` (``FLIPS``), each output
    flipped back.

    volumes: (D, H, W) arrays flipped alike; ``fn(volumes) -> (..., D, H, W)`` array (its last
    three axes flipped back). ``flips`` 1 is ``fn(volumes)`` itself. A sliding-window network's
    output depends on where a voxel falls in its windows and on the orientation it was trained
    in; averaging the flipped copies smooths both (written here because MONAI's
    ``TestTimeAugmentation`` works on dictionaries of random transforms, not on a fixed set of
    flips of several aligned volumes)."""
    if flips not in FLIPS:
        raise ValueError(f"flips must be one of {sorted(FLIPS)}, got {flips!r}")
    total = None
    for axes in FLIPS[flips]:
        out = fn([np.ascontiguousarray(np.flip(v, axes)) if axes else v for v in volumes])
        if axes:
            out = np.flip(out, [out.ndim - 3 + a for a in axes])
        total = out.astype(np.float32) if total is None else total + out
    return total / len(FLIPS[flips])
