"""Cross-fitting: a consensus for every training case from networks that never saw its label.

The label agents judge an annotation against the image and against the model's consensus (the
``seg_prob`` and ``consensus_gap`` state channels). When that consensus comes from the network
that is trained on the very annotation being judged, it has learnt that annotation's noise:
after a few thousand updates its prediction on a training image follows the given label, the
agents learn to restore a corrupted label by copying it (their training target is the given
label), and when they are then applied to the given label nothing moves. With every case noisy
and the noise systematic per case (a whole annotation dilated or eroded), that is exactly the
noise that survives.

``CrossFit`` removes the leak: the training cases are split into ``k`` folds (a seeded
permutation); network ``j`` (a segmentation-only ``StagedNet``, the Warmup loss) trains on the
cases outside fold ``j``, and predicts the cases of fold ``j``. ``out_of_fold`` gives every case
such an out-of-fold foreground probability; ``TrainingSet.consensus`` carries it to the label
agents (their episodes and their refinement) and to the acceptance rules in place of the
segmentation decoder's own probability. This is the cross-validated prediction that confident
learning (Northcutt et al., JAIR 2021) estimates label noise from, used here as the agents'
input rather than as the label.

Measured before this was built (issue 16; realistic preset, every label noisy, given labels at
0.7225 Dice against the truth): agents trained for 10 CPU-min with the in-fold consensus gave
labels at 0.762; the *same* agents given a 2-fold out-of-fold consensus (two networks, 3 CPU-min
each) instead gave 0.801, most of it on the cases dilated or eroded as a whole.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.staged.data import TrainingSet
from agents.staged.harness import WeightEMA, optimiser_step, patch_shape
from agents.staged.losses import seg_loss
from agents.staged.model import make_model
from agents.staged.segment import predict_probability

__all__ = ["CrossFit", "fold_split"]


def fold_split(n: int, k: int, seed: int) -> list[list[int]]:
    """``k`` folds of the case indices 0..n-1 (a seeded permutation, sizes differing by at most one)."""
    if not 2 <= int(k) <= n:
        raise ValueError(f"cross-fitting needs 2 <= folds <= number of cases ({n}), got {k}")
    perm = np.random.default_rng(int(seed)).permutation(n)
    return [sorted(int(i) for i in f) for f in np.array_split(perm, int(k))]


class CrossFit:
    """``k`` segmentation networks, network ``j`` trained on the cases outside fold ``j``.

    ``update(u, lr, seed)`` trains network ``u % k`` for one step (a batch of the training
    patches of its cases, the Warmup loss); ``out_of_fold()`` -> one (D, H, W) float32
    probability per training case, each from the weight average (``WeightEMA``) of the network
    that did not train on it. The networks share the main model's architecture (without agent
    decoders) and precision; each has its own Adam state."""

    def __init__(self, ts: TrainingSet, cfg: dict, model_config: dict, *, seed: int, device, precision: str = "fp32"):
        self.ts, self.cfg, self.device = ts, cfg, device
        self.folds = fold_split(len(ts), int(cfg["crossfit_folds"]), seed)
        self.patch = patch_shape(cfg)
        self.nets, self.subsets, self.opts, self.emas = [], [], [], []
        for j, fold in enumerate(self.folds):
            net = make_model({**model_config, "agents": False}, seed=int(seed) + 1000 + j).to(device)
            net.precision = precision
            net.train()
            self.nets.append(net)
            held_out = set(fold)
            self.subsets.append(ts.subset([i for i in range(len(ts)) if i not in held_out]))
            self.opts.append(torch.optim.Adam(net.parameters(), lr=cfg["lr"]))
            self.emas.append(WeightEMA(net, cfg["ema"]))

    def update(self, u: int, lr: float, seed: int) -> dict:
        """One step of network ``u % k``; returns its loss terms (``Recorder`` keys)."""
        j = u % len(self.nets)
        net, opt = self.nets[j], self.opts[j]
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = self.subsets[j].sample(seed, self.cfg["batch"], self.patch, self.device,
                                      augment=bool(self.cfg["augment"]))
        loss = seg_loss(net(x), y, bce=float(self.cfg["bce"]))
        optimiser_step(net.parameters(), opt, loss, self.cfg["max_grad_norm"])
        self.emas[j].update(net)
        return {"loss": float(loss.detach()), "dice_loss": float(loss.detach()),
                "w_dice": 1.0, "w_value": 0.0, "w_policy": 0.0}

    @torch.no_grad()
    def out_of_fold(self, progress=None) -> list[np.ndarray]:
        """Every training case's foreground probability from the network that did not see it."""
        out: list[np.ndarray | None] = [None] * len(self.ts)
        for j, fold in enumerate(self.folds):
            net = self.nets[j]
            if self.emas[j].shadow is not None:
                net.load_state_dict(self.emas[j].shadow)
            for i in fold:
                out[i] = predict_probability(net, self.ts.images[i], window=self.cfg["window"], device=self.device)
                if progress is not None:
                    progress.update(1)
        return out
