"""Sliding-window inference with a staged model, and ``svl-drl segment`` on a folder of images.

A volume of any size (e.g. 97 x 115 x 93) is cut into overlapping windows on a regular grid
(``agents.eval.refine.grid_starts``: the last window of each axis flush with the volume's end;
volumes smaller than a window are edge-padded). Each voxel's foreground probability is the
mean of its windows' sigmoid outputs; the mask is probability > 0.5. Output files get the
image's affine and header (data type set to uint8; ``--label-value`` is the foreground value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from svl_env.nifti import list_nifti, nifti_stem, save_label_like

from agents.eval.refine import grid_starts

__all__ = ["window_starts", "sliding_window", "predict_probability", "segment_folder", "DEFAULT_WINDOW"]

DEFAULT_WINDOW = 64


def _triple(p) -> tuple[int, int, int]:
    if isinstance(p, (int, np.integer)):
        return (int(p),) * 3
    t = tuple(int(v) for v in p)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"window must be a positive int or 3 positive ints, got {p!r}")
    return t  # type: ignore[return-value]


def window_starts(shape, window, overlap: float) -> list[tuple[int, int, int]]:
    """Window origins covering ``shape`` (each axis at least one window)."""
    w = _triple(window)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    axes = [grid_starts(max(s, p), p, overlap) for s, p in zip(shape, w)]
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


@torch.no_grad()
def sliding_window(fn: Callable[[torch.Tensor, list[tuple[slice, slice, slice]]], torch.Tensor],
                   volumes: list[np.ndarray], *, window=DEFAULT_WINDOW, overlap: float = 0.25, batch_size: int = 2,
                   out_channels: int = 1, device="cpu", pad_modes=None, progress=None) -> np.ndarray:
    """Run ``fn`` over windows of a volume and average the outputs.

    volumes: list of (D, H, W) arrays (image first; masks, ...) cut at the same windows and
    stacked as channels: ``fn(x (N, len(volumes), *win), slices) -> (N, out_channels, *win)``.
    ``pad_modes``: per volume "edge" (default for the first) or "constant" (zeros; default
    for the others). Returns the mean output (out_channels, D, H, W) float32.
    """
    shape = volumes[0].shape
    # the network is fully convolutional: a window never needs to exceed the volume
    win = tuple(min(w, s) for w, s in zip(_triple(window), shape))
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


@torch.no_grad()
def predict_probability(model, image: np.ndarray, *, window=DEFAULT_WINDOW, overlap: float = 0.25,
                        batch_size: int = 2, device="cpu", progress: bool = False, desc: str | None = None) -> np.ndarray:
    """Foreground probability (D, H, W) float32 of one image (D, H, W) in [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be a 3D volume, got shape {image.shape}")
    was_training = model.training
    model.eval()
    win = tuple(min(w, s) for w, s in zip(_triple(window), image.shape))
    n = len(window_starts(image.shape, win, overlap))
    bar = tqdm(total=n, desc=desc or "segment", unit="window", disable=not progress, leave=False)
    try:
        out = sliding_window(lambda x, _: torch.sigmoid(model(x[:, :1])), [image], window=window, overlap=overlap,
                             batch_size=batch_size, device=device, progress=bar)
    finally:
        bar.close()
        model.train(was_training)
    return out[0]


def _out_name(image_path: Path) -> str:
    """nnU-Net's channel suffix is dropped: ``case_0000.nii.gz`` -> ``case.nii.gz``."""
    from svl_env.nifti import _CHANNEL_RE

    name = image_path.name
    ext = ".nii.gz" if name.lower().endswith(".nii.gz") else ".nii"
    stem = nifti_stem(image_path)
    m = _CHANNEL_RE.match(stem)
    if m and m.group("ch") == "0000":
        stem = m.group("case")
    return stem + ext


def segment_folder(model_path, images, out, *, window=None, overlap: float = 0.25, batch_size: int = 2,
                   modality: str | None = None, label_value: int = 1, device="cpu",
                   progress: bool = True) -> list[Path]:
    """Segment every NIfTI image in ``images`` with a pipeline model; write masks to ``out``.

    ``model_path``: a pipeline output folder (its ``model.pt``) or the checkpoint file. Masks are
    named like the images (nnU-Net's ``_0000`` dropped) and keep each image's affine and header.
    """
    from svl_env.nifti import load_case

    from agents.common.checkpoint import all_or_nothing
    from agents.staged.checkpoint import load_model

    model, meta = load_model(model_path, device=device)
    images = Path(images)
    files = list_nifti(images, "images")
    out = Path(out)
    if out.resolve() == images.resolve():
        raise ValueError(f"--out {out} is the images folder: inputs are never overwritten, choose another folder")
    mod = modality or meta.get("modality", "auto")
    win = window if window is not None else meta.get("window", DEFAULT_WINDOW)
    # all or nothing, like refine: a bad image late in the folder leaves no partial set of masks
    with all_or_nothing(out, "--out", prefix=".segment-staging-") as staging:
        for ip in tqdm(files, desc="segment", unit="image", disable=not progress):
            case = load_case(ip, None, modality=mod)
            prob = predict_probability(model, case.image, window=win, overlap=overlap, batch_size=batch_size,
                                       device=device, progress=progress, desc=case.name)
            save_label_like((prob > 0.5).astype(np.int64) * int(label_value), ip, staging / _out_name(ip), np.uint8)
    return [out / _out_name(ip) for ip in files]
