"""The policy protocol shared by every agent in this project and by researchers' own.

A policy maps a batch of observations to one action per voxel::

    actions = policy.act(obs, info, deterministic=True)
    # obs: (B, C, D, H, W) float32 (numpy or torch), channels env.channel_names
    # info: the vector env's info dict (may be None; refine passes None)
    # actions: (B, D, H, W) int64 numpy array, values in [0, K)

The truth contract: the env's ``info`` never holds the truth. A policy that declares
``uses_truth = True`` (the oracle upper bound) gets, from the benchmark and ``svl-drl evaluate``
(``agents.eval.episodes.run_episodes``), a copy of ``info`` with ``info["truth"]`` added before
every ``act`` call: (B, D, H, W) float32 numpy, 1 = foreground. Every other policy sees the
env's info unchanged, so it cannot read the truth by accident.

Optional methods: ``reset(num_envs)`` at episode start (recurrent policies), ``save(path)``
and ``load(path)``. Subclass ``Policy`` or write any object with ``act`` -- the benchmark
duck-types it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class Policy:
    """Base class: override ``act``; ``name`` labels the policy in tables and plots."""

    name: str = "policy"
    uses_truth: bool = False  # True: run_episodes adds info["truth"] (B, D, H, W) before each act (module doc)

    def act(self, obs, info: dict | None = None, deterministic: bool = True) -> np.ndarray:
        raise NotImplementedError

    def reset(self, num_envs: int) -> None:
        """Called at the start of each batch of episodes (clear recurrent state)."""

    def save(self, path) -> Path:
        raise NotImplementedError(f"{type(self).__name__} has no trainable state to save")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def as_tensor(obs, device="cpu") -> torch.Tensor:
    """Observation batch as a float32 tensor on ``device`` (no copy if already there)."""
    return torch.as_tensor(obs, dtype=torch.float32, device=device)


def channel(obs, name: str, channel_names) -> torch.Tensor | np.ndarray:
    """One named channel of an observation batch: (B, C, D, H, W) -> (B, D, H, W)."""
    return obs[:, list(channel_names).index(name)]
