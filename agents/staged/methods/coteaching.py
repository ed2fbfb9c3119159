"""Co-teaching (Han et al., NeurIPS 2018) for voxel-wise segmentation: the comparator that
selects small-loss voxels between two networks.

Two networks of the same backbone (encoder + segmentation decoder, different initialisations)
see the same patches. Each computes its per-voxel binary cross-entropy against the given labels;
network A is updated on the voxels that network B finds easiest and vice versa (the "small-loss
trick": noisy labels are learnt late, so their loss stays large early on). The rate dropped,
``R(t) = forget_rate · min(t / forget_ramp, 1)`` (t = fraction of the budget), grows from 0 to
``forget_rate`` -- Han et al.'s schedule with T_k = ``forget_ramp``. Segmentation adaptation:
the selection is made per class of the given label (foreground voxels ranked among
foreground, background among background; ``R(t) x |foreground|`` voxels dropped from each,
see ``small_loss_mask``), otherwise the small-loss rule would drop the rare, harder foreground
class or the background's look-alike tissue. The loss on the selected voxels is the same segmentation loss as every
other method (soft Dice + BCE, weighted by the selection mask).

Both networks share the budget (each update costs two), so co-teaching gets half as many updates
per network as ``noisy``. The output model is network A; its predictions on the training images
are the "refined labels". The loop, the selection and the schedule are shared with TriNet
(``small_loss``).
"""

from __future__ import annotations

from agents.common.budget import Budget
from agents.staged.data import TrainingSet
from agents.staged.harness import TrainResult
from agents.staged.methods.small_loss import small_loss_mask, train_peers

__all__ = ["small_loss_mask", "coteaching_select", "train"]


def coteaching_select(voxel_losses, label, drop: float) -> list:
    """Network A keeps the voxels network B ranks small-loss and vice versa (``small_loss_mask``)."""
    la, lb = voxel_losses
    return [small_loss_mask(lb, label, drop), small_loss_mask(la, label, drop)]


def train(ts: TrainingSet, *, budget: Budget, seed: int, cfg: dict, model_config: dict | None, device,
          progress: bool = True, stages=None, precision: str = "fp32") -> TrainResult:
    """Networks A and B over the whole budget (``stages`` is not used: one stage); the output is A."""
    return train_peers(ts, n=2, select=coteaching_select, name="coteaching", budget=budget, seed=seed, cfg=cfg,
                       model_config=model_config, device=device, progress=progress, precision=precision)
