"""What co-teaching and TriNet share: the per-class small-loss selection, its ramped drop rate,
and the training loop of several peer networks that pick each other's voxels.

``train_peers`` trains ``n`` networks of the same backbone (encoder + segmentation decoder,
seeds ``seed + 7919 k``) on the same patches. At every update each network's per-voxel binary
cross-entropy against the current labels is computed (detached), ``select`` turns the n loss
maps into one {0,1} keep mask per network, and each network takes one step of the segmentation
loss every method uses (soft Dice + BCE, ``losses.seg_loss``) weighted by its mask, with its own
optimiser. The n networks share the budget: an update costs n forward/backward passes, so they
get about 1/n as many updates each as ``noisy``. The output model is network A (the first),
averaged by ``WeightEMA`` like every method's; its predictions on the training images are the
"refined labels".
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from agents.common.budget import Budget, update_seed
from agents.staged.data import TrainingSet
from agents.staged.harness import (Clock, Recorder, TrainResult, WeightEMA, dice_np, lr_at, patch_shape,
                                   predict_training)
from agents.staged.losses import seg_loss
from agents.staged.model import make_model

__all__ = ["small_loss_mask", "drop_rate", "train_peers", "PEER_SEED_STRIDE"]

PEER_SEED_STRIDE = 7919  # network k is initialised with seed + k x this


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


def drop_rate(cfg: dict, p: float) -> float:
    """``R(t) = forget_rate x min(t / forget_ramp, 1)`` at budget progress ``p`` (Han et al.'s
    schedule with T_k = ``forget_ramp``, as a fraction of the budget)."""
    return float(cfg["forget_rate"]) * min(p / max(float(cfg["forget_ramp"]), 1e-9), 1.0)


def train_peers(ts: TrainingSet, *, n: int, select: Callable[[Sequence[torch.Tensor], torch.Tensor, float], list],
                name: str, budget: Budget, seed: int, cfg: dict, model_config: dict | None, device,
                progress: bool = True, precision: str = "fp32") -> TrainResult:
    """``n`` peer networks over the whole budget (one stage, recorded as ``name``); ``select(losses,
    label, drop)`` -> one keep mask per network. The output is network A (module doc)."""
    from tqdm.auto import tqdm

    mcfg = {**(model_config or {}), "agents": False}
    nets = [make_model(mcfg, seed=seed + k * PEER_SEED_STRIDE).to(device) for k in range(n)]
    for net in nets:
        net.precision = precision
    opts = [torch.optim.Adam(net.parameters(), lr=cfg["lr"]) for net in nets]
    ema = WeightEMA(nets[0], cfg["ema"])  # the output network (A), averaged like every method's
    patch = patch_shape(cfg)
    rec = Recorder()
    clock = Clock(budget)
    u = 0
    rec.open(name, 0, 0, 0.0)
    bar = tqdm(desc=f"train ({name})", unit="update", disable=not progress, leave=False)
    for net in nets:
        net.train()
    while True:
        p = clock.progress(u)
        if p >= 1.0:
            break
        lr = lr_at(cfg, p)
        for o in opts:
            for g in o.param_groups:
                g["lr"] = lr
        drop = drop_rate(cfg, p)
        x, y = ts.sample(update_seed(seed, u), cfg["batch"], patch, device, augment=bool(cfg["augment"]))
        logits = [net(x) for net in nets]
        vl = [torch.nn.functional.binary_cross_entropy_with_logits(lg.detach(), y, reduction="none") for lg in logits]
        keep = select(vl, y, drop)
        losses = [seg_loss(lg, y, bce=float(cfg["bce"]), weight=k) for lg, k in zip(logits, keep)]
        for net, o, loss in zip(nets, opts, losses):
            o.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), float(cfg["max_grad_norm"]))
            o.step()
        ema.update(nets[0])
        kept = float((keep[0] > 0).float().mean())
        rec.add(u, name, 0, clock.cpu_s, lr,
                {"loss": float(losses[0].detach()), "dice_loss": losses[0].detach(), "select_fg": 1.0 - drop})
        u += 1
        bar.update(1)
        bar.set_postfix_str(f"p={p:.2f} drop={drop:.2f} loss={float(losses[0].detach()):.3f} kept(A)={kept:.2f}",
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
                              "networks": n})
