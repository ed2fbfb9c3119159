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
are the "refined labels".
"""

from __future__ import annotations

import numpy as np
import torch

from agents.common.budget import Budget, update_seed
from agents.staged.data import TrainingSet
from agents.staged.harness import (Clock, Recorder, TrainResult, WeightEMA, dice_np, lr_at, patch_shape,
                                   predict_training)
from agents.staged.losses import seg_loss
from agents.staged.model import make_model

__all__ = ["small_loss_mask", "train"]


@torch.no_grad()
def small_loss_mask(voxel_loss: torch.Tensor, label: torch.Tensor, drop: float) -> torch.Tensor:
    """{0,1} mask dropping, in each class of ``label``, the ``drop x |foreground|`` voxels with the
    largest loss (the rest is kept). voxel_loss, label (B, 1, D, H, W) -> same shape, float32.

    The same *number* of voxels from each class: boundary annotation noise (dilation, erosion)
    flips about as many background as foreground voxels, so ``drop`` is the noise rate relative
    to the foreground; a fraction of the (much larger) background would instead drop its
    hardest voxels -- the look-alike tissue next to the organ -- and teach over-segmentation."""
    keep = torch.ones_like(voxel_loss)
    if drop <= 0:
        return keep
    flat_l, flat_y, flat_k = voxel_loss.reshape(-1), label.reshape(-1) > 0.5, keep.view(-1)
    n_fg = int(flat_y.sum())
    for cls in (True, False):
        idx = torch.nonzero(flat_y == cls).squeeze(1)
        n_drop = min(int(round(drop * n_fg)), idx.numel())
        if n_drop <= 0:
            continue
        worst = torch.topk(flat_l[idx], n_drop, largest=True).indices
        flat_k[idx[worst]] = 0.0
    return keep


def train(ts: TrainingSet, *, budget: Budget, seed: int, cfg: dict, model_config: dict | None, device,
          progress: bool = True, stages=None, precision: str = "fp32") -> TrainResult:
    """Networks A and B over the whole budget (``stages`` is not used: one stage); the output is A."""
    from tqdm.auto import tqdm

    mcfg = {**(model_config or {}), "agents": False}
    nets = [make_model(mcfg, seed=seed).to(device), make_model(mcfg, seed=seed + 7919).to(device)]
    for n in nets:
        n.precision = precision
    opts = [torch.optim.Adam(n.parameters(), lr=cfg["lr"]) for n in nets]
    ema = WeightEMA(nets[0], cfg["ema"])  # the output network (A), averaged like every method's
    patch = patch_shape(cfg)
    rec = Recorder()
    clock = Clock(budget)
    u = 0
    rec.open("coteaching", 0, 0, 0.0)
    bar = tqdm(desc="train (co-teaching)", unit="update", disable=not progress, leave=False)
    for n in nets:
        n.train()
    while True:
        p = clock.progress(u)
        if p >= 1.0:
            break
        lr = lr_at(cfg, p)
        for o in opts:
            for g in o.param_groups:
                g["lr"] = lr
        drop = float(cfg["forget_rate"]) * min(p / max(float(cfg["forget_ramp"]), 1e-9), 1.0)
        x, y = ts.sample(update_seed(seed, u), cfg["batch"], patch, device, augment=bool(cfg["augment"]))
        logits = [n(x) for n in nets]
        vl = [torch.nn.functional.binary_cross_entropy_with_logits(lg.detach(), y, reduction="none") for lg in logits]
        keep = [small_loss_mask(vl[1], y, drop), small_loss_mask(vl[0], y, drop)]  # A learns from B's pick
        losses = [seg_loss(lg, y, bce=float(cfg["bce"]), weight=k) for lg, k in zip(logits, keep)]
        for n, o, loss in zip(nets, opts, losses):
            o.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(n.parameters(), float(cfg["max_grad_norm"]))
            o.step()
        ema.update(nets[0])
        agree = float(((keep[0] > 0) == (keep[1] > 0)).float().mean())
        rec.add(u, "coteaching", 0, clock.cpu_s, lr,
                {"loss": float(losses[0].detach()), "dice_loss": losses[0].detach(), "select_fg": 1.0 - drop})
        u += 1
        bar.update(1)
        bar.set_postfix_str(f"p={p:.2f} drop={drop:.2f} loss={float(losses[0].detach()):.3f} agree={agree:.2f}",
                            refresh=False)
    bar.close()
    cpu_s, wall_s = clock.cpu_s, clock.wall_s
    model = nets[0]
    if ema.shadow is not None:
        model.load_state_dict(ema.shadow)
    with clock.paused():
        pred = predict_training(model, ts, cfg, device)
    rec.close(u, cpu_s, pred_vs_given_dice=float(np.mean([dice_np(a, g) for a, g in zip(pred, ts.given)])),
              forget_rate=float(cfg["forget_rate"]))
    model.eval()
    return TrainResult(model, pred, rec.entries, rec.curves, u, cpu_s, wall_s,
                       extra={"refined_labels_from": "model predictions on the training images (network A)",
                              "networks": 2})
