"""The trained vA3C policy under the project's ``Policy`` protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agents.common.checkpoint import (CheckpointError, load_checkpoint, load_state_dict_checked, resolve_checkpoint,
                                      save_checkpoint)
from agents.common.distributions import gumbel_sample, voxel_argmax
from agents.common.networks import PolicyValueNet
from agents.common.policy import Policy, as_tensor
from agents.va3c.config import KIND, make_config
from agents.va3c.model import _init_net, build_net
from svl_env import EnvConfig


# --------------------------------------------------------------------------- the policy
class VA3CPolicy(Policy):
    """A trained vA3C network as a ``Policy``: argmax (deterministic) or sampled action per voxel.

    ``act(obs (B, C, D, H, W), info, deterministic)`` -> (B, D, H, W) int64 numpy. Recurrent
    (ConvGRU) state is kept between calls and cleared by ``reset``.
    """

    name = "va3c"
    kind = KIND  #: the checkpoint kind it saves and loads (a subclass reusing the format sets its own)

    def __init__(self, net: PolicyValueNet, config: dict | None = None, device="cpu", name: str | None = None):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = dict(config or {})
        self.hidden = None
        if name:
            self.name = name
        self._gen = None

    @classmethod
    def untrained(cls, env_kwargs: EnvConfig | dict | None = None, seed: int = 0, device="cpu",
                  **config) -> "VA3CPolicy":
        """The initial (random-weight) policy of a run with this seed and config."""
        cfg = make_config(**config)
        env = EnvConfig.from_any(env_kwargs)
        net = _init_net(cfg, env.num_channels, env.num_actions, seed)
        return cls(net, {"train": cfg, "net": net.config}, device=device, name="va3c-untrained")

    def reset(self, num_envs: int) -> None:
        self.hidden = None

    @torch.no_grad()
    def act(self, obs, info: dict | None = None, deterministic: bool = True) -> np.ndarray:
        x = as_tensor(obs, self.device)
        if x.dim() == 4:
            x = x[None]
        if self.hidden is not None and self.hidden.shape[0] != x.shape[0]:
            self.hidden = None
        logits, _, self.hidden = self.net(x, self.hidden)
        if deterministic:
            a = voxel_argmax(logits, 1)
        else:
            a = gumbel_sample(logits, None)
        return a.cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def logits_value(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value, _ = self.net(as_tensor(obs, self.device))
        return logits, value

    def save(self, path) -> Path:
        cfg = {"net": self.net.config, "train": self.config.get("train", {}), "env": self.config.get("env", {})}
        return save_checkpoint(path, self.kind, cfg, {"model": self.net.state_dict()}, meta={"policy_only": True})

    @classmethod
    def load(cls, path, device="cpu") -> "VA3CPolicy":
        """From a checkpoint file or a run folder (its ``checkpoint.pt``). Refuses other kinds."""
        ck = load_checkpoint(resolve_checkpoint(path), cls.kind)
        return cls.from_checkpoint(ck, device=device)

    @classmethod
    def from_checkpoint(cls, ck: dict, device="cpu") -> "VA3CPolicy":
        """The policy of a loaded checkpoint (``load_checkpoint``); its network config and weights
        are validated (keys, shapes, finite values) before anything is loaded."""
        cfg, where = ck["config"], ck.get("path", "vA3C checkpoint")
        if not isinstance(cfg.get("net"), dict) or "model" not in ck["tensors"]:
            raise CheckpointError(f"{where}: vA3C checkpoint lacks the network config or weights")
        net = build_net(cfg["net"], where)
        load_state_dict_checked(net, ck["tensors"]["model"], where, "network weights")
        return cls(net, cfg, device=device)

