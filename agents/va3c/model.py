"""vA3C's network: the shared per-voxel policy/value net plus the learnable reward-map
convolution, and how a network is built from a config or a checkpoint."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.common.checkpoint import CheckpointError
from agents.common.networks import PolicyValueNet


# --------------------------------------------------------------------------- the model
class RewardMapConv(nn.Module):
    """PixelRL's reward-map convolution ``w * R``: one 3D kernel (no bias), identity at init.

    (B, D, H, W) -> (B, D, H, W); zero padding (returns beyond the patch are unknown).
    """

    def __init__(self, size: int = 3):
        super().__init__()
        self.size = int(size)
        w = torch.zeros(1, 1, self.size, self.size, self.size)
        c = self.size // 2
        w[0, 0, c, c, c] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return F.conv3d(r[:, None], self.weight, padding=self.size // 2)[:, 0]


class VA3CModel(nn.Module):
    """The shared per-voxel network plus the reward-map convolution (one optimiser for both)."""

    def __init__(self, net_config: dict, reward_conv: bool = True, reward_conv_size: int = 3):
        super().__init__()
        self.net = PolicyValueNet(**net_config)
        self.reward_conv = RewardMapConv(reward_conv_size) if reward_conv else None

    def forward(self, obs, hidden=None):
        return self.net(obs, hidden)

    def propagate(self, R: torch.Tensor) -> torch.Tensor:
        """``w * R`` (identity without a reward conv)."""
        return R if self.reward_conv is None else self.reward_conv(R)


def build_net(net_config: dict, where) -> PolicyValueNet:
    """``PolicyValueNet(**net_config)`` from a checkpoint's config; a config that does not build
    a network (unknown keys, bad values) is a CheckpointError naming the file."""
    from svl_env import ACTION_SETS, CHANNEL_NAMES

    try:
        net = PolicyValueNet(**net_config)
    except Exception as exc:
        raise CheckpointError(f"{where}: network config {net_config} does not build a network "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if net.config["in_channels"] != len(CHANNEL_NAMES):
        raise CheckpointError(f"{where}: network takes {net.config['in_channels']} observation channels, "
                              f"the environment has {len(CHANNEL_NAMES)}")
    if net.config["n_actions"] not in {len(v) for v in ACTION_SETS.values()}:
        raise CheckpointError(f"{where}: network has {net.config['n_actions']} actions, no action set has that many")
    return net


def _init_net(cfg: dict, in_channels: int, n_actions: int, seed: int) -> PolicyValueNet:
    """The network of a run: weights from ``seed`` (global RNG untouched), keep-biased policy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PolicyValueNet(**_net_config(cfg, in_channels, n_actions))
    with torch.no_grad():
        net.policy_head[-1].bias[0] = float(cfg["keep_bias"])  # action 0 is "keep" in both action sets
    return net


def _net_config(cfg: dict, in_channels: int, n_actions: int) -> dict:
    return dict(in_channels=in_channels, n_actions=n_actions, backbone=cfg["backbone"], width=int(cfg["width"]),
                depth=int(cfg["depth"]), convgru=bool(cfg["convgru"]))
