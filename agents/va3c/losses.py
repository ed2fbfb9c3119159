"""vA3C's losses: the supervised outcome loss (Warmup), PixelRL's n-step actor-critic loss,
the reward scale, and the augmentation of Warmup minibatches."""

from __future__ import annotations

import numpy as np
import torch

from agents.va3c.model import VA3CModel


# --------------------------------------------------------------------------- losses
def label_candidates(mask: torch.Tensor) -> torch.Tensor:
    from svl_env.dynamics import label_candidates as _lc

    return _lc(mask)


def supervised_loss(logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, w_dice: float = 1.0,
                    w_ce: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Warmup loss of the policy's outcome against the reward target.

    logits (N, K, D, H, W); mask (N, D, H, W) {0,1} the state the action applies to; target
    (N, D, H, W) {0,1}. Returns (scalar loss, {"sup_dice", "sup_ce"} floats).
    """
    cand = label_candidates(mask)  # (N, K, D, H, W)
    if cand.shape[1] != logits.shape[1]:
        raise ValueError("the supervised warmup needs the label action set (keep/fg/bg/majority)")
    probs = logits.softmax(1)
    p_fg = (probs * cand).sum(1)
    ok = (cand == target[:, None]).float()
    # log Σ_{a right} π_a, stable: logsumexp over right actions minus logsumexp over all
    log_ok = torch.logsumexp(logits.masked_fill(ok == 0, -1e4), 1) - torch.logsumexp(logits, 1)
    ce = -log_ok.mean()
    dims = tuple(range(1, p_fg.dim()))
    inter = (p_fg * target).sum(dims)
    denom = p_fg.sum(dims) + target.sum(dims)
    soft_dice = (2 * inter + 1.0) / (denom + 1.0)
    dl = (1.0 - soft_dice).mean()
    return w_dice * dl + w_ce * ce, {"sup_dice": float(dl.detach()), "sup_ce": float(ce.detach())}


def a2c_segment_loss(model: VA3CModel, logps, values, rewards, bootstrap, gamma: float):
    """PixelRL's n-step loss over one segment (lists of length T, tensors (B, D, H, W)).

    ``bootstrap``: detached V(s_T) or zeros. Returns (policy loss without the entropy bonus,
    value loss, mean |A|), each averaged over steps and voxels."""
    R = bootstrap
    pg, vl, adv_abs = 0.0, 0.0, 0.0
    T = len(rewards)
    for t in reversed(range(T)):
        R = rewards[t] + gamma * model.propagate(R)
        adv = R - values[t]
        pg = pg - (logps[t] * adv.detach()).mean()
        vl = vl + 0.5 * adv.pow(2).mean()
        adv_abs = adv_abs + adv.detach().abs().mean()  # stays on the device; read once by the caller
    return pg / T, vl / T, float(adv_abs) / T


def scale_for(reward_scale, patch_shape) -> float:
    return float(np.prod(patch_shape)) if reward_scale == "voxels" else float(reward_scale)


# --------------------------------------------------------------------------- augmentation
def _augment(tensors: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """Same random flips and spatial-axis permutation for every tensor (last 3 dims spatial)."""
    r = torch.rand(4, generator=gen, device=gen.device).tolist()
    perm = [int(i) for i in torch.randperm(3, generator=gen, device=gen.device).tolist()]
    out = []
    for x in tensors:
        lead = x.dim() - 3
        flips = [lead + i for i in range(3) if r[i] < 0.5]
        if flips:
            x = x.flip(flips)
        x = x.permute(*range(lead), *[lead + p for p in perm])
        out.append(x.contiguous())
    return out
