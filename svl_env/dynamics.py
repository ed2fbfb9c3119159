"""State dynamics: what a per-voxel action does to the voxel's state, batched.

Two action sets (DESIGN.md):

``"label"`` (default) -- the action edits the voxel's mask state directly:
    0 keep, 1 set foreground, 2 set background,
    3 majority: the voxel takes the majority state of its 3x3x3 neighbourhood (itself included).
All voxels act simultaneously on the state before the step.

``"intensity"`` (the paper's) -- the action edits the voxel's intensity, ε ~ U(0, 1) per voxel
and step:  0 keep, 1 enhance ``I' = clip(I·(1 + 0.3ε), 0, 1)``, 2 weaken
``I' = clip(I·(1 - 0.3ε), 0, 1)``. The mask is then the segmenter's output on the edited
volume: ``segmenter(I'[:, None]) > 0`` (the segmenter returns logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LABEL_ACTIONS = ("keep", "set_foreground", "set_background", "majority")
INTENSITY_ACTIONS = ("keep", "enhance", "weaken")
ACTION_SETS = {"label": LABEL_ACTIONS, "intensity": INTENSITY_ACTIONS}
INTENSITY_STRENGTH = 0.3


def _box_sum(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 box sum with zero padding, separable: (B, D, H, W) -> same.

    Hand-rolled rather than ``avg_pool3d`` because the pooling op rejects patches thinner
    than its kernel (2 voxels) even with padding; on CPU the separable sum costs the same.
    """
    for dim in (1, 2, 3):
        pad = [0] * 6
        pad[2 * (3 - dim)] = pad[2 * (3 - dim) + 1] = 1
        p = F.pad(x, pad)
        n = x.shape[dim]
        x = p.narrow(dim, 0, n) + p.narrow(dim, 1, n) + p.narrow(dim, 2, n)
    return x


_INV_COUNT: dict = {}


def neighbourhood_mean(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 mean over voxels inside the patch; (B, D, H, W) -> same, float32."""
    key = (tuple(x.shape[1:]), str(x.device))
    if key not in _INV_COUNT:
        _INV_COUNT[key] = 1.0 / _box_sum(torch.ones(1, *x.shape[1:], device=x.device))
    return _box_sum(x.float()) * _INV_COUNT[key]


def label_candidates(mask: torch.Tensor, mask_mean3: torch.Tensor | None = None) -> torch.Tensor:
    """The state each label action gives each voxel: (B, D, H, W) -> (B, 4, D, H, W) float32.

    ``mask_mean3`` may pass ``neighbourhood_mean(mask)`` when the caller already has it."""
    mean3 = neighbourhood_mean(mask) if mask_mean3 is None else mask_mean3
    majority = (mean3 > 0.5).float()
    return torch.stack([mask, torch.ones_like(mask), torch.zeros_like(mask), majority], 1)


def apply_label_actions(mask: torch.Tensor, actions: torch.Tensor,
                        mask_mean3: torch.Tensor | None = None) -> torch.Tensor:
    """New mask after label actions. mask (B, D, H, W) {0,1} float32, actions same shape int."""
    mean3 = neighbourhood_mean(mask) if mask_mean3 is None else mask_mean3
    majority = (mean3 > 0.5).float()
    out = torch.where(actions == 1, torch.ones_like(mask), mask)
    out = torch.where(actions == 2, torch.zeros_like(mask), out)
    return torch.where(actions == 3, majority, out)


def apply_intensity_actions(image: torch.Tensor, actions: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """New intensities: image, eps (B, D, H, W) float32 in [0, 1]; actions int (B, D, H, W)."""
    sign = (actions == 1).float() - (actions == 2).float()
    return (image * (1.0 + INTENSITY_STRENGTH * eps * sign)).clamp_(0.0, 1.0)


@torch.no_grad()
def segment(segmenter: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Binary mask {0,1} float32 (B, D, H, W) from a segmenter returning logits.

    The segmenter receives (B, 1, D, H, W) and may return (B, 1, D, H, W) or (B, D, H, W).
    """
    logits = segmenter(image[:, None])
    if logits.dim() == 5:
        if logits.shape[1] != 1:
            raise ValueError(f"segmenter must return one logit channel, got shape {tuple(logits.shape)}")
        logits = logits[:, 0]
    if logits.shape != image.shape:
        raise ValueError(f"segmenter output shape {tuple(logits.shape)} does not match image {tuple(image.shape)}")
    return (logits > 0).float()
