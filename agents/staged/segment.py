"""Sliding-window inference with a staged model, and ``svl-drl segment`` on a folder of images.

A volume of any size (e.g. 97 x 115 x 93) is cut into overlapping windows on a regular grid
(``agents.common.windows``: the last window of each axis flush with the volume's end;
volumes smaller than a window are edge-padded). Each voxel's foreground probability is the
mean of its windows' sigmoid outputs; the mask is probability > 0.5. Output files get the
image's affine and header (data type set to uint8; ``--label-value`` is the foreground value).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from svl_env.data.nifti import list_nifti, nifti_stem, save_label_like

from agents.common.windows import DEFAULT_WINDOW, as_triple, flip_mean, sliding_window, window_starts

__all__ = ["predict_probability", "segment_folder"]


@torch.no_grad()
def predict_probability(model, image: np.ndarray, *, window=DEFAULT_WINDOW, overlap: float = 0.25,
                        batch_size: int = 2, device="cpu", progress: bool = False,
                        desc: str | None = None, flips: int = 1) -> np.ndarray:
    """Foreground probability (D, H, W) float32 of one image (D, H, W) in [0, 1].

    ``flips``: the mean over that many flipped copies of the image (``windows.flip_mean``:
    1, 2, 4 or 8; each copy costs one more pass)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be a 3D volume, got shape {image.shape}")
    was_training = model.training
    model.eval()
    win = tuple(min(w, s) for w, s in zip(as_triple(window), image.shape))
    n = len(window_starts(image.shape, win, overlap))
    bar = tqdm(total=n * flips, desc=desc or "segment", unit="window", disable=not progress, leave=False)
    try:
        out = flip_mean(lambda vols: sliding_window(lambda x, _: torch.sigmoid(model(x[:, :1])), vols, window=window,
                                                    overlap=overlap, batch_size=batch_size, device=device,
                                                    progress=bar), [image], flips)
    finally:
        bar.close()
        model.train(was_training)
    return out[0]


def _out_name(image_path: Path) -> str:
    """nnU-Net's channel suffix is dropped: ``case_0000.nii.gz`` -> ``case.nii.gz``."""
    from svl_env.data.nifti import CHANNEL_RE

    name = image_path.name
    ext = ".nii.gz" if name.lower().endswith(".nii.gz") else ".nii"
    stem = nifti_stem(image_path)
    m = CHANNEL_RE.match(stem)
    if m and m.group("ch") == "0000":
        stem = m.group("case")
    return stem + ext


def segment_folder(model_path, images, out, *, window=None, overlap: float = 0.25, batch_size: int = 2,
                   modality: str | None = None, label_value: int = 1, device="cpu",
                   progress: bool = True, flips: int = 4) -> list[Path]:
    """Segment every NIfTI image in ``images`` with a pipeline model; write masks to ``out``.

    ``flips``: each probability is the mean over that many flipped copies of the image
    (``predict_probability``; 1, 2, 4 or 8). 4 by default, as ``svl-drl segment``: on the phantom
    benchmarks it raised every model's test Dice (README "Test-time flip averaging"); 1 is one pass.

    ``model_path``: a pipeline output folder (its ``model.pt``) or the checkpoint file. Masks are
    named like the images (nnU-Net's ``_0000`` dropped) and keep each image's affine and header.
    """
    from svl_env.data.nifti import load_case

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
                                       device=device, progress=progress, desc=case.name, flips=flips)
            save_label_like((prob > 0.5).astype(np.int64) * int(label_value), ip, staging / _out_name(ip), np.uint8)
    return [out / _out_name(ip) for ip in files]
