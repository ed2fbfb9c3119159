"""The per-voxel PPO network of ``rllib-ppo`` (plain torch, no Ray): the shared 3D backbone
(``agents.common.networks``), the keep-biased per-voxel policy head and the pooled value head that
the SB3 baseline also uses."""

from __future__ import annotations

import torch
import torch.nn as nn

from agents.common.networks import PooledValueHead, keep_biased_policy_head, make_backbone

#: network options (``VoxelPPONet``); the SB3 baseline's defaults
NET_DEFAULTS = dict(backbone="unet", width=16, depth=2, keep_bias=4.0)


class VoxelPPONet(nn.Module):
    """Shared backbone + per-voxel policy head + pooled value head (plain torch, no Ray).

    ``policy(obs (B, C, D, H, W))`` -> (logits (B, K, D, H, W), features (B, F, D, H, W));
    ``value_from_features(features)`` / ``value(obs)`` -> (B,); ``forward(obs)`` -> (logits, value).
    Fully convolutional: runs on any patch size.
    """

    def __init__(self, in_channels: int, n_actions: int, backbone: str = "unet", width: int = 16, depth: int = 2,
                 keep_bias: float = 4.0):
        super().__init__()
        self.config = dict(in_channels=int(in_channels), n_actions=int(n_actions), backbone=str(backbone),
                           width=int(width), depth=int(depth), keep_bias=float(keep_bias))
        self.backbone = make_backbone(backbone, in_channels=int(in_channels), width=int(width), depth=int(depth))
        f = int(self.backbone.out_channels)
        self.policy_head = keep_biased_policy_head(f, int(n_actions), float(keep_bias))
        self.value_head = PooledValueHead(f)

    def policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(obs)
        return self.policy_head(feats), feats

    def value_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.value_head(feats)[:, 0]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_head(self.backbone(obs))[:, 0]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.policy(obs)
        return logits, self.value_head(feats)[:, 0]


def net_config_for(in_channels: int, n_actions: int, **options) -> dict:
    """``VoxelPPONet`` keyword arguments from a model config. Other keys are ignored: RLlib merges
    its own algorithm defaults (e.g. PPO's ``vf_share_layers``) into every module's config;
    ``split_options`` is where user options are checked."""
    cfg = {k: options.get(k, v) for k, v in NET_DEFAULTS.items()}
    return dict(in_channels=int(in_channels), n_actions=int(n_actions), **cfg)
