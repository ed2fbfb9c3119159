"""``RLlibPolicy``: a PPO policy trained with RLlib under the project's ``Policy`` protocol, with its
tensor-only checkpoint (``agents.common.checkpoint``). Needs torch only, not Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agents.common.checkpoint import load_checkpoint, load_state_dict_checked, resolve_checkpoint, save_checkpoint
from agents.common.distributions import gumbel_max, voxel_argmax
from agents.common.policy import Policy, as_tensor
from agents.rllib.net import VoxelPPONet

KIND = "rllib-ppo"


class RLlibPolicy(Policy):
    """A PPO policy trained with RLlib, under the project's ``Policy`` protocol.

    ``act(obs (B, C, D, H, W), info, deterministic)`` -> (B, D, H, W) int64 in [0, K):
    the per-voxel argmax when deterministic, else a per-voxel categorical sample.
    ``save(path)`` writes a tensor-only checkpoint (``kind="rllib-ppo"``); ``load(path)``
    accepts the file or its run folder. Needs torch only, not Ray.
    """

    name = "rllib-ppo"

    def __init__(self, net: VoxelPPONet, config: dict | None = None, device="cpu", name: str | None = None):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = dict(config or {})
        self.config.setdefault("net", dict(net.config))
        if name:
            self.name = name

    @torch.no_grad()
    def act(self, obs, info: dict | None = None, deterministic: bool = True) -> np.ndarray:
        x = as_tensor(obs, self.device)
        if x.dim() != 5:
            raise ValueError(f"obs must be (B, C, D, H, W), got shape {tuple(x.shape)}")
        logits, _ = self.net.policy(x)
        if deterministic:
            a = voxel_argmax(logits, 1)
        else:
            a = gumbel_max(logits.log_softmax(1), 1)
        return a.cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def value(self, obs) -> np.ndarray:
        """Critic estimate per volume, (B,) float32."""
        return self.net.value(as_tensor(obs, self.device)).cpu().numpy()

    def save(self, path, meta: dict | None = None) -> Path:
        return save_checkpoint(path, KIND, self.config, {"model": self.net.state_dict()}, meta)

    @classmethod
    def load(cls, path, device="cpu", name: str | None = None) -> "RLlibPolicy":
        ck = load_checkpoint(resolve_checkpoint(path), KIND)
        return cls.from_checkpoint(ck, device=device, name=name)

    @classmethod
    def from_checkpoint(cls, ck: dict, device="cpu", name: str | None = None) -> "RLlibPolicy":
        """The policy of a loaded checkpoint (``agents.common.checkpoint.load_checkpoint``); its network
        config and weights are validated (keys, shapes, finite values) before anything loads."""
        from svl_env.dynamics import ACTION_SETS
        from svl_env.vector_env import CHANNEL_NAMES

        from agents.common.checkpoint import CheckpointError

        cfg, where = ck["config"], ck.get("path", "rllib-ppo checkpoint")
        net_cfg = cfg.get("net")
        if not isinstance(net_cfg, dict) or "model" not in ck["tensors"]:
            raise CheckpointError(f"{where}: rllib-ppo checkpoint lacks the network config or weights")
        # The config comes from the file: check sizes before they allocate anything.
        width, depth = net_cfg.get("width"), net_cfg.get("depth")
        if not (isinstance(width, int) and 1 <= width <= 512 and isinstance(depth, int) and 0 <= depth <= 6):
            raise CheckpointError(f"{where}: network config {net_cfg} has an implausible width/depth")
        try:
            net = VoxelPPONet(**net_cfg)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise CheckpointError(f"{where}: network config {net_cfg} does not build a network "
                                  f"({type(exc).__name__}: {msg})") from None
        if net.config["in_channels"] != len(CHANNEL_NAMES) or \
                net.config["n_actions"] not in {len(v) for v in ACTION_SETS.values()}:
            raise CheckpointError(f"{where}: network ({net.config['in_channels']} channels, {net.config['n_actions']} "
                                  "actions) does not fit the environment")
        load_state_dict_checked(net, ck["tensors"]["model"], where, "network weights")
        return cls(net, cfg, device=device, name=name)
