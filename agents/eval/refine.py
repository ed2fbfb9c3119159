"""Refine whole noisy label volumes with a trained voxel policy (sliding patches, blended).

A policy is trained on patches (``patch_size`` of its env, 32^3 by default); a volume of any
size is cut into overlapping patches on a regular grid (``agents.common.windows``: the last
patch of each axis aligned to the volume's end; volumes smaller than a patch are padded). On every patch the policy runs
``max_steps`` steps exactly as in the environment -- the observation is rebuilt from the
patch's image, current mask and annotation with the env's channel definitions
(``svl_env.CHANNEL_NAMES``), and actions are applied with the env's own dynamics
(``svl_env.dynamics.apply_label_actions``). Each voxel's refined state is then the average
of its patches' final masks (> 0.5 -> foreground; an exact tie keeps the annotation).

``refine_folder`` pairs ``labels/NAME.nii[.gz]`` with ``images/NAME.nii[.gz]`` (or nnU-Net's
``NAME_0000``) and writes ``out/NAME.nii[.gz]`` with the input label's shape, affine, header
and on-disk dtype (``svl_env.data.nifti.save_label_like``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from svl_env import CHANNEL_NAMES, EnvConfig
from svl_env.dynamics import apply_label_actions, neighbourhood_mean
from svl_env.data.nifti import list_nifti, nifti_stem

from agents.common.windows import as_triple, sliding_window, window_starts


def observe(image: torch.Tensor, mask: torch.Tensor, annotation: torch.Tensor, t: int, max_steps: int) -> torch.Tensor:
    """The env's observation of a batch of patch states: (B, D, H, W) x3 -> (B, C, D, H, W).

    Channel order and definitions follow ``svl_env.CHANNEL_NAMES`` (checked by the tests
    against ``SVLDRLVectorEnv``): image, mask, annotation, their 3x3x3 in-patch means, t/T.
    """
    chans = {"image": image, "mask": mask, "annotation": annotation,
             "image_mean3": neighbourhood_mean(image), "mask_mean3": neighbourhood_mean(mask),
             "time": torch.full_like(mask, t / max_steps)}
    missing = [c for c in CHANNEL_NAMES if c not in chans]
    if missing:
        raise ValueError(f"refine does not know how to build observation channel(s) {missing}")
    return torch.stack([chans[c] for c in CHANNEL_NAMES], 1)


@torch.no_grad()
def refine_volume(policy, image: np.ndarray, label: np.ndarray, *, patch_size=32, max_steps: int = 5,
                  overlap: float = 0.25, batch_size: int = 4, device=None, progress: bool = False,
                  desc: str | None = None) -> np.ndarray:
    """Refine one volume. image (D, H, W) float in [0, 1]; label (D, H, W) binary.

    ``policy``: any ``agents.common.policy.Policy`` acting on label actions (e.g. ``VA3CPolicy``).
    Returns the refined mask (D, H, W) bool.
    """
    image = np.asarray(image, dtype=np.float32)
    label = np.asarray(label).astype(bool)
    if image.ndim != 3 or label.shape != image.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} must be 3D volumes of the same shape")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    patch = as_triple(patch_size, 'patch size')
    dev = torch.device(device if device is not None else getattr(policy, "device", "cpu"))

    def run(x, _):
        im, an = x[:, 0].contiguous(), x[:, 1].contiguous()
        mask = an.clone()
        if hasattr(policy, "reset"):
            policy.reset(x.shape[0])
        for t in range(max_steps):
            a = policy.act(observe(im, mask, an, t, max_steps), None, deterministic=True)
            mask = apply_label_actions(mask, torch.as_tensor(a, device=dev))
        return mask[:, None]

    bar = tqdm(total=len(window_starts(image.shape, patch, overlap)), desc=desc or "refine", unit="patch",
               disable=not progress, leave=False)
    try:
        mean = sliding_window(run, [image, label.astype(np.float32)], window=patch, overlap=overlap,
                              batch_size=batch_size, device=dev, progress=bar, shrink=False)[0]
    finally:
        bar.close()
    return np.where(mean == 0.5, label, mean > 0.5)


def pair_files(images_dir, labels_dir) -> list[tuple[str, Path, Path]]:
    """(name, image path, label path) for every label file; a missing image raises FileNotFoundError."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    labels = list_nifti(labels_dir, "labels")
    images = {nifti_stem(p): p for p in list_nifti(images_dir, "images")}
    pairs = []
    for lp in labels:
        stem = nifti_stem(lp)
        ip = images.get(stem) or images.get(stem + "_0000")
        if ip is None:
            raise FileNotFoundError(f"no image for label {lp} in {images_dir} (expected {stem}.nii.gz)")
        pairs.append((stem, ip, lp))
    return pairs


def load_policy(checkpoint, device="cpu"):
    """A trained label-action policy (any agent in ``agents.registry``) and its training env
    (an ``EnvConfig``; the defaults when the file does not record it)."""
    from agents import registry

    pol, _ = registry.load_policy(checkpoint, device=device)
    env = EnvConfig.from_json((getattr(pol, "config", None) or {}).get("env", {}) or {})
    if env.action_set != "label":
        raise ValueError(f"{checkpoint}: refine needs a policy trained with label actions, "
                         f"this one uses {env.action_set!r}")
    return pol, env


def check_output_paths(out: Path, pairs, images, labels) -> None:
    """Outputs go only under ``out`` and never onto an input: refuse ``out`` equal to (or a link
    to) the images or labels folder, and any output file that resolves to an input file."""
    out_r = out.resolve()
    for what, folder in (("labels", labels), ("images", images)):
        if out_r == Path(folder).resolve():
            raise ValueError(f"--out {out} is the {what} folder: inputs are never overwritten, choose another folder")
    inputs = {p.resolve() for _, ip, lp in pairs for p in (ip, lp)}
    for _, _, lp in pairs:
        target = out / lp.name
        hit = target.resolve() in inputs
        if not hit and target.exists():  # hard links
            hit = any(os.path.samefile(target, p) for p in inputs if p.exists())
        if hit:
            raise ValueError(f"output {target} resolves to an input file ({target.resolve()}): "
                             "inputs are never overwritten, choose another --out")


def refine_folder(checkpoint, images, labels, out, *, patch_size=None, max_steps: int | None = None,
                  overlap: float = 0.25, batch_size: int = 4, label_value: int | None = 1, modality: str = "auto",
                  device="cpu", progress: bool = True) -> list[Path]:
    """Refine every label volume in ``labels`` (images in ``images``); write them to ``out``.

    ``patch_size`` / ``max_steps`` default to the policy's training env. Returns the written paths.
    Errors (missing files, shape/affine mismatch, wrong checkpoint) raise FileNotFoundError or
    ValueError with one line naming the file.

    All or nothing: the refined volumes are written (atomically, ``save_label_like``) into a
    hidden staging folder inside ``out`` and moved into place only when every case succeeded,
    so a failure leaves ``out`` as it was. ``out`` may not be, or lead onto, an input.
    """
    from svl_env.data.nifti import load_case, save_label_like

    from agents.common.checkpoint import all_or_nothing

    policy, env = load_policy(checkpoint, device=device)
    pairs = pair_files(images, labels)
    out = Path(out)
    check_output_paths(out, pairs, images, labels)
    patch = patch_size if patch_size is not None else env.patch_size
    steps = int(max_steps if max_steps is not None else env.episode_steps)
    value = 1 if label_value is None else int(label_value)
    with all_or_nothing(out, "--out", prefix=".refine-staging-") as staging:
        for name, ip, lp in tqdm(pairs, desc="cases", unit="case", disable=not progress):
            case = load_case(ip, lp, label_value=label_value, modality=modality, name=name)
            refined = refine_volume(policy, case.image, case.label, patch_size=patch, max_steps=steps,
                                    overlap=overlap, batch_size=batch_size, device=device, progress=progress,
                                    desc=name)
            save_label_like(refined.astype(np.int64) * value, lp, staging / lp.name)
    return [out / lp.name for _, _, lp in pairs]
