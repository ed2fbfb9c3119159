"""``supervised``: the control of the RL agents -- vA3C's network trained with vA3C's Warmup loss
for the whole budget, with no value or policy stage.

Everything but the stage switches is vA3C's (``agents.va3c``): the same ``PolicyValueNet``,
keep-biased initialisation, greedy DAgger-style rollouts, minibatch reuse, augmentation,
learning-rate schedule, run folder, resume and asynchronous workers. What the RL stages add
is the difference between vA3C and this agent at the same budget (issue 15). Its checkpoints
record the kind ``"supervised"``, so ``evaluate`` / ``refine`` tell them apart from vA3C's;
files written before this agent existed keep their kind ``"va3c"`` and load as vA3C.

Python::

    from agents.supervised import train_supervised
    policy = train_supervised({"patch_size": 32}, cpu_minutes=8, out="runs/supervised")
"""

from __future__ import annotations

from pathlib import Path

from agents.va3c.policy import VA3CPolicy
from agents.va3c.run import VA3CRun
from agents.va3c.train import run_training
from agents.va3c.train import train_from_args as _va3c_train_from_args

__all__ = ["KIND", "SupervisedPolicy", "SupervisedRun", "train_supervised", "train_from_args"]

KIND = "supervised"


class SupervisedPolicy(VA3CPolicy):
    """A trained ``supervised`` network as a ``Policy`` (vA3C's, saved with its own kind)."""

    name = "supervised"
    kind = KIND


class SupervisedRun(VA3CRun):
    """A vA3C run with only the Warmup stage enabled; enabling ``value`` or ``policy`` is an error."""

    kind = KIND
    policy_class = SupervisedPolicy

    def __init__(self, env_kwargs: dict, *, config: dict | None = None, **kw):
        config = dict(config or {})
        on = [s for s in ("value", "policy") if config.get(s)]
        if on or config.get("warmup") is False:
            raise ValueError(f"the supervised agent trains the Warmup stage only; got {', '.join(on) or 'warmup=False'}"
                             " (use --agent va3c for the RL stages)")
        super().__init__(env_kwargs, config={**config, "warmup": True, "value": False, "policy": False}, **kw)


def train_supervised(env_kwargs: dict, *, minutes: float | None = None, updates: int | None = None, seed: int = 0,
                     workers: int = 0, out: str | Path | None = None, progress: bool = True,
                     **config) -> SupervisedPolicy:
    """Train the supervised control; arguments and extra keywords as ``agents.va3c.train_va3c``."""
    return run_training(env_kwargs, minutes=minutes, updates=updates, seed=seed, workers=workers, out=out,
                        progress=progress, run_class=SupervisedRun, **config)[0]


def train_from_args(args) -> Path:
    """``svl-drl train --agent supervised`` (options: agents/cli/train.py)."""
    return _va3c_train_from_args(args, run_class=SupervisedRun)
