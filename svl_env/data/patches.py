"""Patches of volumes: foreground-biased patch origins, cropping and padding (numpy, any dtype)."""

from __future__ import annotations

import numpy as np

__all__ = ["crop", "pad_to", "patch_origin"]


def _triple(x, what: str) -> tuple[int, int, int]:
    t = tuple(int(v) for v in x)
    if len(t) != 3:
        raise ValueError(f"{what} must have 3 entries, got {x!r}")
    return t  # type: ignore[return-value]


def patch_origin(
    case_shape, patch_shape, label: np.ndarray | None, u: np.ndarray, fg_prob: float = 0.66
) -> tuple[int, int, int]:
    """Foreground-biased patch origin (pure function of ``u``).

    With ``u[0] < fg_prob`` and a non-empty ``label`` the patch is centred (as far as the
    volume allows) on the foreground voxel ``floor(u[1] * n_fg)`` in C order; otherwise the
    origin is uniform, axis ``a`` drawn from ``u[1 + a]``. Along axes where the volume is not
    larger than the patch the origin is 0 (the caller pads, see :func:`pad_to` / :func:`crop`).
    """
    shape = _triple(case_shape, "case_shape")
    patch = _triple(patch_shape, "patch_shape")
    if min(patch) < 1:
        raise ValueError(f"patch_shape must be positive, got {patch}")
    u = np.asarray(u, dtype=np.float64).ravel()
    if u.size < 4:
        raise ValueError(f"patch_origin needs at least 4 uniform numbers, got {u.size}")
    max_o = [max(s - p, 0) for s, p in zip(shape, patch)]

    if label is not None and float(u[0]) < fg_prob:
        lab = np.asarray(label)
        if lab.shape != shape:
            raise ValueError(f"label shape {lab.shape} does not match case_shape {shape}")
        fg = np.flatnonzero(lab)
        if fg.size:
            k = min(int(float(u[1]) * fg.size), fg.size - 1)
            centre = np.unravel_index(int(fg[max(k, 0)]), shape)
            return tuple(
                int(min(max(int(c) - p // 2, 0), m)) for c, p, m in zip(centre, patch, max_o)
            )  # type: ignore[return-value]
    return tuple(
        int(min(max(int(float(u[1 + a]) * (max_o[a] + 1)), 0), max_o[a])) for a in range(3)
    )  # type: ignore[return-value]


def pad_to(arr: np.ndarray, patch_shape, value=0) -> np.ndarray:
    """Pad the last three axes at their end up to at least ``patch_shape`` (constant ``value``)."""
    arr = np.asarray(arr)
    patch = _triple(patch_shape, "patch_shape")
    if arr.ndim < 3:
        raise ValueError(f"pad_to needs an array with >= 3 dims, got shape {arr.shape}")
    spatial = arr.shape[-3:]
    if all(s >= p for s, p in zip(spatial, patch)):
        return arr
    widths = [(0, 0)] * (arr.ndim - 3) + [(0, max(p - s, 0)) for s, p in zip(spatial, patch)]
    return np.pad(arr, widths, mode="constant", constant_values=value)


def crop(arr, origin, patch_shape, *, mode: str = "constant", value=0) -> np.ndarray:
    """``arr[..., o0:o0+p0, o1:o1+p1, o2:o2+p2]`` of exactly ``patch_shape`` (a copy).

    Where the volume ends before the patch does, the patch is padded at the end with
    ``value`` (``mode="constant"``, default 0) or by repeating the edge (``mode="edge"``).
    """
    arr = np.asarray(arr)
    o = _triple(origin, "origin")
    patch = _triple(patch_shape, "patch_shape")
    if arr.ndim < 3:
        raise ValueError(f"crop needs an array with >= 3 dims, got shape {arr.shape}")
    if min(o) < 0:
        raise ValueError(f"origin must be non-negative, got {o}")
    if mode not in ("constant", "edge"):
        raise ValueError(f"mode must be 'constant' or 'edge', got {mode!r}")
    sl = tuple(slice(oa, oa + pa) for oa, pa in zip(o, patch))
    out = arr[(Ellipsis,) + sl]
    got = out.shape[-3:]
    if got == patch:
        return out.copy()
    widths = [(0, 0)] * (arr.ndim - 3) + [(0, p - g) for g, p in zip(got, patch)]
    if mode == "edge" and min(got) > 0:
        return np.pad(out, widths, mode="edge")
    return np.pad(out, widths, mode="constant", constant_values=value)
