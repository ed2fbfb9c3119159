"""Per-voxel categorical sampling shared by the voxel agents."""

from __future__ import annotations

import torch


def gumbel_sample(logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One categorical sample per voxel from (B, K, ...) logits -> (B, ...) int64.

    Gumbel-max with an explicit generator: reproducible per update, no global RNG state.
    """
    u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=logits.dtype)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    return (logits.detach() + g).argmax(1)
