"""``noisy``: plain training of the same encoder + segmentation decoder on the given labels for the
whole budget (svl-drl's Warmup loss throughout). Its "refined labels" are its predictions on the
training images."""

from __future__ import annotations

from agents.common.budget import Budget
from agents.staged.data import TrainingSet
from agents.staged.harness import TrainResult
from agents.staged.methods.svl_drl import StagedRun, stage_plan
from agents.staged.model import make_model

__all__ = ["train"]


def train(ts: TrainingSet, *, budget: Budget, seed: int, cfg: dict, model_config: dict | None, device,
          progress: bool = True, stages=None, precision: str = "fp32") -> TrainResult:
    """The Warmup stage over the whole budget (``stages`` is not used: one stage)."""
    plan = stage_plan(("warmup",), cfg)
    model = make_model({**(model_config or {}), "agents": False}, seed=seed).to(device)
    model.precision = precision
    return StagedRun(model, ts, plan, cfg, budget, seed, device, progress).run()
