"""The staged pipeline's methods behind one table: ``METHODS`` maps a name (``svl-drl pipeline
--method``) to its ``Method``. Every method trains the same backbone on the same budget and has
``train(ts, *, budget, seed, stages, cfg, model_config, device, progress, precision) -> TrainResult``.

- ``svl-drl`` (default): the paper's staged framework (``svl_drl``).
- ``noisy``: plain training on the given labels (``noisy``).
- ``coteaching``: Han et al. 2018 for segmentation, two networks sharing the budget (``coteaching``).
- ``trinet``: Zhang et al. 2020, three networks, each trained on the voxels both others rank
  small-loss (``trinet``; the loop shared with co-teaching is ``small_loss``).
- ``self-training``: svl-drl's stages and rounds without label agents; each round's candidate
  labels are the model's own predictions, through the same acceptance step (``self_training``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from agents.common.budget import Budget
from agents.common.precision import resolve_precision
from agents.staged.data import TrainingSet
from agents.staged.harness import TrainResult, make_train_config
from agents.staged.methods import coteaching, noisy, self_training, svl_drl, trinet
from agents.staged.methods.svl_drl import STAGES

__all__ = ["METHODS", "STAGES", "Method", "train"]


@dataclass(frozen=True)
class Method:
    """A training method: its ``train`` and the stages ``--stages`` may pick from (None: one stage)."""

    train: Callable[..., TrainResult]
    stages: tuple[str, ...] | None = None


METHODS: dict[str, Method] = {
    "svl-drl": Method(svl_drl.train, STAGES),
    "noisy": Method(noisy.train),
    "coteaching": Method(coteaching.train),
    "trinet": Method(trinet.train),
    "self-training": Method(self_training.train, STAGES),
}


def train(method: str, ts: TrainingSet, *, budget: Budget, seed: int = 0, stages=STAGES, config: dict | None = None,
          model_config: dict | None = None, device="cpu", progress: bool = True,
          precision: str | None = None) -> TrainResult:
    """Train ``method`` on the training set within ``budget``. Never reads anything but ``ts``.

    ``precision``: auto (None), fp32 or bf16 (``agents.common.precision``) for every forward pass
    of training and label refinement; the resolved value is ``extra["precision"]``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    cfg = make_train_config(**(config or {}))
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    result = METHODS[method].train(ts, budget=budget, seed=seed, stages=stages, cfg=cfg, model_config=model_config,
                                   device=device, progress=progress, precision=precision)
    result.extra["precision"] = precision
    return result
