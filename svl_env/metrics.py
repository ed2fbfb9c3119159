"""Segmentation metrics, batched over a leading batch axis.

Masks are (B, D, H, W) tensors (bool or {0,1} float) unless said otherwise. Every function
returns one value per batch row.

Edge cases (documented once, here):
- Dice and IoU of two empty masks are 1 (nothing to find, nothing found).
- HD95 and ASD of two empty masks are 0; when exactly one mask is empty they are NaN
  (no surface to measure against), as in MONAI; aggregate with ``np.nanmean``.
- Component counts use 26-connectivity (a voxel touches all 26 neighbours), the usual
  choice for 3D foreground objects.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.ndimage as ndi
import torch


def _flat(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1).to(torch.float32)


_BYTES = (torch.bool, torch.uint8)


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """Exact per-row sums of a small non-negative integer map -- bool, uint8, int8, or
    integer-valued float32 -- as (B,) float64. Byte maps are summed as integers, by numpy
    on CPU, whose uint32 reduction is vectorised (16 x 64^3: 0.6 ms, where torch widens
    element by element to int64 or needs a 16 MB float copy); float32 maps in float32,
    exact while the sums stay below 2**24."""
    b = x.shape[0]
    if x.dtype == torch.float32:
        return x.reshape(b, -1).sum(1).double()
    if x.device.type == "cpu":
        flat = x.reshape(b, -1).numpy().view(np.uint8)
        return torch.from_numpy(flat.sum(1, dtype=np.uint32).astype(np.float64))
    return x.reshape(b, -1).sum(1, dtype=torch.int64).double()


def overlap_counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(|pred ∩ target|, |pred|, |target|), each (B,) float64 (exact integer counts)."""
    if pred.dtype in _BYTES and target.dtype in _BYTES:  # {0,1} masks as bytes: count bytes
        p, t = pred.view(torch.uint8), target.view(torch.uint8)
        return row_sums(p & t), row_sums(p), row_sums(t)
    p, t = _flat(pred), _flat(target)
    return (p * t).sum(1).double(), p.sum(1).double(), t.sum(1).double()


def dice_from_counts(tp: torch.Tensor, n_pred: torch.Tensor, n_target: torch.Tensor) -> torch.Tensor:
    """Dice 2|P∩G| / (|P|+|G|) from counts; 1 where both are empty."""
    s = n_pred + n_target
    return torch.where(s > 0, 2.0 * tp / s.clamp_min(1e-12), torch.ones_like(s))


def dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice coefficient per row, (B,) float64 in [0, 1]."""
    return dice_from_counts(*overlap_counts(pred, target))


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union per row, (B,) float64 in [0, 1]."""
    tp, n_p, n_t = overlap_counts(pred, target)
    union = n_p + n_t - tp
    return torch.where(union > 0, tp / union.clamp_min(1e-12), torch.ones_like(union))


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Σ|∇f|: number of face-adjacent voxel pairs that differ (anisotropic TV), (B,) float64.

    For a binary mask this is the surface area in voxel faces, excluding the patch border.
    """
    f = mask.to(torch.float32)
    tv = (f[:, 1:] - f[:, :-1]).abs().sum((1, 2, 3))
    tv = tv + (f[:, :, 1:] - f[:, :, :-1]).abs().sum((1, 2, 3))
    tv = tv + (f[:, :, :, 1:] - f[:, :, :, :-1]).abs().sum((1, 2, 3))
    return tv.double()


# A lone row: one 3D labelling, the batch axis without connectivity.
_STRUCT_26 = np.zeros((3, 3, 3, 3), dtype=bool)
_STRUCT_26[1] = True
_CUBE_26 = np.ones((3, 3, 3), dtype=bool)


def _count_rows(m: np.ndarray) -> np.ndarray:
    """26-connected components per row of a (B, D, H, W) bool array: one scipy call."""
    b, d, h, w = m.shape
    if b > 1:
        # scipy labels line by line along the last axis, at a fixed cost per line and per
        # neighbouring line: lay the rows side by side along W, each followed by an empty
        # column, so the lines are b times longer and b times fewer (16 x 16^3: ~15 % less
        # time). 26-neighbours differ by at most 1 in W, so no component crosses a gap.
        side = np.zeros((d, h, b, w + 1), dtype=bool)
        side[..., :w] = m.transpose(1, 2, 0, 3)
        labels, n = ndi.label(side.reshape(d, h, b * (w + 1)), structure=_CUBE_26)
        # a component lies in one row: count the distinct labels per row (label 0 = background)
        row_of = np.zeros(n + 1, dtype=np.intp)
        row_of[labels.reshape(d, h, b, w + 1)] = np.arange(b)[:, None]
        return np.bincount(row_of[1:], minlength=b)
    labels, _ = ndi.label(m, structure=_STRUCT_26)
    row_max = labels.reshape(labels.shape[0], -1).max(1) if labels.size else np.zeros(len(m), np.int64)
    prev = np.concatenate([[0], np.maximum.accumulate(row_max)[:-1]])
    return np.where(row_max > 0, row_max - prev, 0)


# scipy's label runs single-threaded but releases the GIL, so a batch split over a small thread
# pool labels on every core torch may use; a single env (one row) never pays for the pool.
_POOL: dict = {}  # (pid, workers) -> pool; a forked child must not reuse its parent's threads
_MIN_VOXELS_PER_CHUNK = 1 << 16  # below this, thread hand-off costs more than it saves


def _pool(workers: int) -> ThreadPoolExecutor:
    key = (os.getpid(), workers)
    if key not in _POOL:
        for old in _POOL.values():
            old.shutdown(wait=False)
        _POOL.clear()
        _POOL[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="svl-label")
    return _POOL[key]


def n_components(mask: torch.Tensor) -> torch.Tensor:
    """Number of 26-connected foreground components per row, (B,) int64 on mask.device.

    Runs on the host (scipy): one labelling per chunk of rows (``_count_rows``), no loop over
    rows. Large batches are split into ``torch.get_num_threads()`` chunks labelled
    concurrently. This is the one host round-trip of an environment step.
    """
    m = mask.detach().to("cpu", torch.bool).numpy()
    chunks = min(torch.get_num_threads(), len(m), max(1, m.size // _MIN_VOXELS_PER_CHUNK))
    if chunks <= 1:
        counts = _count_rows(m)
    else:
        counts = np.concatenate(list(_pool(chunks).map(_count_rows, np.array_split(m, chunks))))
    return torch.as_tensor(counts, dtype=torch.int64, device=mask.device)


def surface_norm(shape: tuple[int, int, int]) -> float:
    """(D·H·W)^(2/3): the patch's face area scale, used to make TV comparable across sizes."""
    return float(np.prod(shape)) ** (2.0 / 3.0)


def continuity(mask: torch.Tensor, w_cc: float = 0.05, w_tv: float = 1.0,
               n_cc: torch.Tensor | None = None) -> torch.Tensor:
    """The spatial-continuity cost C(f) = w_cc·max(N_cc(f) - 1, 0) + w_tv·Σ|∇f| / (DHW)^(2/3).

    Lower is more continuous; (B,) float64. ``n_cc`` may pass precomputed component counts.
    """
    if n_cc is None:
        n_cc = n_components(mask)
    frag = (n_cc.double() - 1.0).clamp_min(0.0)
    return w_cc * frag + w_tv * total_variation(mask) / surface_norm(tuple(mask.shape[1:]))


# --- surface distances (host side: evaluation only, never in the step loop) -------------

def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(3, 1), border_value=0)


def _surface_distances(pred: np.ndarray, target: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances (mm) from each surface voxel of one mask to the other's surface, both ways."""
    sp, st = _surface(pred), _surface(target)
    if not sp.any() or not st.any():
        return None
    d_to_t = ndi.distance_transform_edt(~st, sampling=spacing)
    d_to_p = ndi.distance_transform_edt(~sp, sampling=spacing)
    return d_to_t[sp], d_to_p[st]


def _per_row(pred, target, spacing):
    pred = np.asarray(pred.detach().cpu() if torch.is_tensor(pred) else pred).astype(bool)
    target = np.asarray(target.detach().cpu() if torch.is_tensor(target) else target).astype(bool)
    if pred.ndim == 3:
        pred, target = pred[None], target[None]
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    sp = np.broadcast_to(np.asarray(spacing if spacing is not None else (1.0, 1.0, 1.0), dtype=np.float64),
                         (pred.shape[0], 3))
    return pred, target, sp


def hd95(pred, target, spacing=None) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance in mm, (B,) float64.

    ``pred``/``target``: (B, D, H, W) or (D, H, W) masks (torch or numpy); ``spacing``: (3,)
    or (B, 3) voxel size in mm (default 1 mm). max of the two directed 95th percentiles.
    """
    pred, target, sp = _per_row(pred, target, spacing)
    out = np.empty(pred.shape[0])
    for b in range(pred.shape[0]):  # evaluation-time: scipy's EDT works per volume
        if not pred[b].any() and not target[b].any():
            out[b] = 0.0
            continue
        d = _surface_distances(pred[b], target[b], sp[b])
        out[b] = np.nan if d is None else max(np.percentile(d[0], 95), np.percentile(d[1], 95))
    return out


def asd(pred, target, spacing=None) -> np.ndarray:
    """Average symmetric surface distance in mm, (B,) float64 (same conventions as hd95)."""
    pred, target, sp = _per_row(pred, target, spacing)
    out = np.empty(pred.shape[0])
    for b in range(pred.shape[0]):
        if not pred[b].any() and not target[b].any():
            out[b] = 0.0
            continue
        d = _surface_distances(pred[b], target[b], sp[b])
        out[b] = np.nan if d is None else float(np.concatenate(d).mean())
    return out
