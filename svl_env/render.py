"""``rgb_array`` frames: three orthogonal central slices with overlays.

Drawn with numpy alone (no figure library) so that rendering inside a rollout stays cheap.
Colours: current mask = green fill, annotation = yellow outline, truth = red outline.
"""

from __future__ import annotations

import numpy as np
import torch

_GREEN = np.array([0, 200, 60], np.float32)
_YELLOW = np.array([255, 215, 0], np.uint8)
_RED = np.array([230, 30, 30], np.uint8)


def _outline(m: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that touch a background pixel (4-neighbourhood)."""
    pad = np.pad(m, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return m & ~inner


def _slices(vol: np.ndarray) -> list[np.ndarray]:
    d, h, w = vol.shape
    return [vol[d // 2], vol[:, h // 2], vol[:, :, w // 2]]


def _tile(views: list[np.ndarray], gap: int = 2) -> np.ndarray:
    height = max(v.shape[0] for v in views)
    cols = []
    for v in views:
        pad = np.zeros((height, v.shape[1], *v.shape[2:]), v.dtype)
        pad[: v.shape[0]] = v
        cols += [pad, np.zeros((height, gap, *v.shape[2:]), v.dtype)]
    return np.concatenate(cols[:-1], 1)


def render_frame(image, mask, annotation, truth=None, scale: int | None = None) -> np.ndarray:
    """(D, H, W) tensors/arrays -> (rows, cols, 3) uint8: axial | coronal | sagittal slices."""
    arrs = [None if x is None else (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x))
            for x in (image, mask, annotation, truth)]
    image, mask, annotation, truth = arrs
    views = []
    for k in range(3):
        img = _slices(image)[k]
        rgb = np.repeat((np.clip(img, 0, 1) * 255)[..., None], 3, -1).astype(np.float32)
        m = _slices(mask)[k] > 0.5
        rgb[m] = 0.6 * rgb[m] + 0.4 * _GREEN
        rgb = rgb.astype(np.uint8)
        rgb[_outline(_slices(annotation)[k] > 0.5)] = _YELLOW
        if truth is not None:
            rgb[_outline(_slices(truth)[k] > 0.5)] = _RED
        views.append(rgb)
    frame = _tile(views)
    if scale is None:
        scale = max(1, 256 // max(frame.shape[0], 1))
    return np.ascontiguousarray(frame.repeat(scale, 0).repeat(scale, 1))
