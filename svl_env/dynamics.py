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
    """3x3x3 box sum with zero padding, separable: (B, D, H, W) -> same dtype.

    Hand-rolled rather than ``avg_pool3d`` because the pooling op rejects patches thinner
    than its kernel (2 voxels) even with padding. Along each axis every output is
    ``(x[i-1] + x[i]) + x[i+1]`` with zeros beyond the border, summed in that order so that
    float sums are reproducible. The shifted sums are written into two reused buffers instead
    of padded copies (16 x 64^3 float32: 25 -> 9 ms), except along the innermost axis of a
    byte tensor, where a padded copy is faster than a strided byte add.
    """
    bufs = [torch.empty_like(x), torch.empty_like(x)]
    for dim in (1, 2, 3):
        n = x.shape[dim]
        if dim == 3 and x.element_size() == 1 or n == 1:
            pad = [0] * 6
            pad[2 * (3 - dim)] = pad[2 * (3 - dim) + 1] = 1
            p = F.pad(x, pad)
            x = p.narrow(dim, 0, n) + p.narrow(dim, 1, n)
            x += p.narrow(dim, 2, n)
            continue
        out = bufs[dim % 2]
        torch.add(x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1), out=out.narrow(dim, 1, n - 1))
        torch.add(x.narrow(dim, 0, 1), 0, out=out.narrow(dim, 0, 1))
        out.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1))
        out.narrow(dim, n - 1, 1).add_(0)
        x = out
    return x


_INV_COUNT: dict = {}
_MAJORITY_AT: dict = {}


def _inv_count(shape, device) -> torch.Tensor:
    key = (tuple(shape), str(device))
    if key not in _INV_COUNT:
        _INV_COUNT[key] = 1.0 / _box_sum(torch.ones(1, *shape, device=device))
    return _INV_COUNT[key]


def as_u8(mask: torch.Tensor) -> torch.Tensor:
    """A {0,1} mask as uint8 (itself for uint8, a view for bool, a conversion otherwise)."""
    if mask.dtype == torch.uint8:
        return mask
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask.to(torch.uint8)


def box_sum(mask: torch.Tensor) -> torch.Tensor:
    """3x3x3 foreground counts of a {0,1} mask (bool, uint8 or float): (B, D, H, W) uint8."""
    return _box_sum(as_u8(mask))


def mean_from_box(box: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``neighbourhood_mean`` of a mask from its ``box_sum`` (float32; ``out``: optional buffer,
    e.g. an observation channel). The float sums of a {0,1} mask are these integers, so the
    result is bit-identical to ``neighbourhood_mean`` of the float mask."""
    out = box.float() if out is None else out.copy_(box)
    return out.mul_(_inv_count(box.shape[1:], box.device))


def majority_from_box(box: torch.Tensor) -> torch.Tensor:
    """``neighbourhood_mean(mask) > 0.5`` from the mask's ``box_sum``, as uint8 {0,1}.

    Compared with a per-voxel integer threshold: the smallest k whose float32 mean
    ``k * (1 / count)`` exceeds 0.5, found by evaluating that very expression, so the two
    tests agree exactly (byte compare instead of a float32 pass)."""
    key = (tuple(box.shape[1:]), str(box.device))
    if key not in _MAJORITY_AT:
        inv = _inv_count(box.shape[1:], box.device)
        at = torch.zeros(inv.shape, dtype=torch.uint8, device=box.device)
        for k in range(28):  # counts are <= 27; k * inv is non-decreasing in k
            at += (k * inv <= 0.5).to(torch.uint8)
        _MAJORITY_AT[key] = at
    return (box >= _MAJORITY_AT[key]).view(torch.uint8)


def neighbourhood_mean(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 mean over voxels inside the patch; (B, D, H, W) -> same, float32.

    Bool and uint8 inputs are {0,1} masks, summed in uint8 (``box_sum``, exact, a quarter of
    float32's memory traffic); anything else is summed in float32.
    """
    if x.dtype in (torch.bool, torch.uint8):
        return mean_from_box(box_sum(x))
    return _box_sum(x.float()) * _inv_count(x.shape[1:], x.device)


def label_candidates(mask: torch.Tensor, mask_mean3: torch.Tensor | None = None) -> torch.Tensor:
    """The state each label action gives each voxel: (B, D, H, W) -> (B, 4, D, H, W) float32.

    ``mask_mean3`` may pass ``neighbourhood_mean(mask)`` when the caller already has it."""
    mean3 = neighbourhood_mean(mask) if mask_mean3 is None else mask_mean3
    majority = (mean3 > 0.5).float()
    return torch.stack([mask, torch.ones_like(mask), torch.zeros_like(mask), majority], 1)


def label_step(mask: torch.Tensor, actions: torch.Tensor, majority: torch.Tensor) -> torch.Tensor:
    """The label dynamics on uint8 {0,1} states: mask, majority (B, D, H, W) uint8 (or bool),
    actions uint8 in [0, 4) -> new mask uint8.

    The one implementation of the label actions (``apply_label_actions`` and the envs call
    it). Action bits b1 b0 select the state: 00 keep, 01 set 1, 10 set 0, 11 majority, i.e.
    ``b1 ? b0 & majority : b0 | mask``, evaluated branch-free with byte ops (torch.where and
    comparisons cost 5-30x a byte op on CPU).
    """
    m, j = as_u8(mask), as_u8(majority)
    b0 = actions & 1
    b1 = actions >> 1
    keep = b0 | m  # result when b1 == 0
    sel = b0.bitwise_and_(j).bitwise_xor_(keep).bitwise_and_(b1)  # (b1 result ^ keep) where b1
    return keep.bitwise_xor_(sel)


def apply_label_actions(mask: torch.Tensor, actions: torch.Tensor,
                        mask_mean3: torch.Tensor | None = None) -> torch.Tensor:
    """New mask after label actions. mask (B, D, H, W) {0,1} float32, actions same shape
    integers in [0, 4) (``LABEL_ACTIONS``); returns float32 {0,1}."""
    mean3 = neighbourhood_mean(mask) if mask_mean3 is None else mask_mean3
    m8 = mask.to(torch.uint8)
    return label_step(m8, actions.to(torch.uint8), (mean3 > 0.5).view(torch.uint8)).float()


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
