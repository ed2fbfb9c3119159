"""TriNet (Zhang, Yu, Hu, Lv, Gu, MICCAI 2020, "Robust medical image segmentation from non-expert
annotations with tri-network") for voxel-wise segmentation: co-teaching with three networks,
where each network learns only from the voxels its two peers *agree* are clean.

Three networks of the same backbone (encoder + segmentation decoder, different initialisations)
see the same patches. Each computes its per-voxel binary cross-entropy against the given labels
and ranks its voxels by it; network A is updated on the voxels that *both* B and C rank
small-loss (the intersection of their keep masks), B on those A and C agree on, C on those A and
B agree on (``trinet_select``). Two peers must vote a voxel clean, so a voxel one peer has
already fitted wrongly (memorised noise) is still dropped when the other does not find it easy:
the three-network answer to co-teaching's confirmation bias. The dropped rate per peer,
``R(t) = forget_rate · min(t / forget_ramp, 1)`` (t = fraction of the budget), ramps up from 0
exactly as co-teaching's (same ``forget_rate`` / ``forget_ramp`` options, same per-class
``small_loss_mask``: ``R(t) x |foreground|`` voxels from each class of the given label); since
two peers' masks are intersected, a network drops between ``R(t)`` and ``2 R(t)`` of them. The
loss on the kept voxels is the same segmentation loss as every other method (soft Dice + BCE,
weighted by the mask).

Differences from the published / PyMIC version (``pymic/net_run/noisy_label/nll_trinet.py``,
read for reference): PyMIC trains one module with three outputs, ranks each output's
cross-entropy over all pixels of the batch (one quantile, no per-class split), ramps the
forget ratio from ``rampup_start`` to ``rampup_end`` iterations and averages the three selected
losses into one step. Here the three networks are separate (``make_model(agents=False)``, seeds
``seed``, ``seed + 7919``, ``seed + 2·7919``) with one optimiser each, the selection is
co-teaching's per-class one (a single quantile over a patch would drop the rare foreground
first), and the ramp is in budget fractions. Which network (or average) the paper uses at
test time is not stated in the trainer we read; we output network A, averaged over the updates
(``WeightEMA``) like every method's model, as co-teaching does.

The three networks share the budget (each update costs three), so TriNet gets a third as many
updates per network as ``noisy``. The output model's predictions on the training images are the
"refined labels".
"""

from __future__ import annotations

import torch

from agents.common.budget import Budget
from agents.staged.data import TrainingSet
from agents.staged.harness import TrainResult
from agents.staged.methods.small_loss import small_loss_mask, train_peers

__all__ = ["trinet_select", "train"]


@torch.no_grad()
def trinet_select(voxel_losses, label, drop: float) -> list[torch.Tensor]:
    """Keep masks of the three networks: network i keeps the voxels that both other networks
    rank small-loss (``small_loss_mask`` of each, multiplied). voxel_losses: three (B, 1, D, H, W)
    loss maps; label the same shape -> three {0,1} float masks."""
    if len(voxel_losses) != 3:
        raise ValueError(f"TriNet selects among three networks, got {len(voxel_losses)} loss maps")
    small = [small_loss_mask(vl, label, drop) for vl in voxel_losses]
    return [small[(i + 1) % 3] * small[(i + 2) % 3] for i in range(3)]


def train(ts: TrainingSet, *, budget: Budget, seed: int, cfg: dict, model_config: dict | None, device,
          progress: bool = True, stages=None, precision: str = "fp32") -> TrainResult:
    """Networks A, B and C over the whole budget (``stages`` is not used: one stage); the output is A."""
    return train_peers(ts, n=3, select=trinet_select, name="trinet", budget=budget, seed=seed, cfg=cfg,
                       model_config=model_config, device=device, progress=progress, precision=precision)
