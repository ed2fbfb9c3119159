"""Warm start of SB3 PPO/A2C (``train_sb3(..., init_from=PATH)``) from a ``supervised`` / vA3C
/ voxel-PPO checkpoint (``agents.common.init_from``).

The two networks share their backbone module: ``PolicyValueNet.trunk`` and
``VoxelFeatures.backbone`` are both ``make_backbone(kind, in_channels, width, depth)``, so with
the same (kind, width, depth) their weights have the same names and shapes. SB3's defaults
(``unet``, width 16, depth 2) differ from the supervised agent's (``unet``, 8, 3): a warm start
therefore builds the SB3 policy with the checkpoint's backbone, width and depth unless they are
given explicitly (then they must match it).

What is transferred:

- backbone: every weight (``trunk.*`` -> ``features_extractor.backbone.*``), exactly;
- policy head: ``PolicyValueNet.policy_head`` is 1x1x1 conv, ReLU, 1x1x1 conv;
  ``keep_biased_policy_head`` is 3x3x3 conv, ReLU, 1x1x1 conv. The 1x1x1 kernel becomes the
  centre tap of the 3x3x3 kernel (the other 26 taps zero), which computes the same function,
  so the warm-started SB3 policy starts with the checkpoint's per-voxel logits (its
  ``keep_bias`` is the checkpoint's trained bias, not the option's);
- not transferred: the value head (the checkpoint's is per voxel, SB3's ``PooledValueHead`` is
  one value per volume: it starts from its own zero init), the optimiser state, and vA3C's
  reward-map convolution (SB3 has none).
"""

from __future__ import annotations

import torch

from agents.common.checkpoint import validate_state_dict
from agents.common.init_from import check_same_network, read_init
from agents.common.networks import PolicyValueNet

__all__ = ["BACKBONE_KEYS", "warm_policy_kwargs", "load_into_policy", "read_init"]

BACKBONE_KEYS = ("backbone", "width", "depth")


def warm_policy_kwargs(init: dict, pol_kw: dict, explicit, in_channels: int, n_actions: int) -> dict:
    """``pol_kw`` with the checkpoint's backbone, width and depth (except those in ``explicit``,
    the options the caller gave); ValueError, one line naming both shapes, if the network then
    differs from the checkpoint's (including a ConvGRU checkpoint: SB3's policy has none)."""
    pol = dict(pol_kw)
    for k in BACKBONE_KEYS:
        if k not in explicit:
            pol[k] = init["net"].get(k, pol[k])
    expected = dict(backbone=pol["backbone"], width=int(pol["width"]), depth=int(pol["depth"]), convgru=False,
                    in_channels=int(in_channels), n_actions=int(n_actions))
    check_same_network(init, expected, hint="the SB3 policy takes the checkpoint's backbone, width and depth "
                                            "unless given, has no ConvGRU and needs the env's actions")
    return pol


@torch.no_grad()
def load_into_policy(policy, init: dict) -> None:
    """Copy the checkpoint's backbone and policy head into a ``VoxelActorCriticPolicy`` built
    with ``warm_policy_kwargs`` (see the module doc for what is and is not transferred)."""
    net = PolicyValueNet(**init["net"])
    validate_state_dict(net, init["weights"], init["path"], "network weights")
    net.load_state_dict(init["weights"])
    policy.features_extractor.backbone.load_state_dict(net.trunk.state_dict())
    src, dst = net.policy_head, policy.action_net
    w = torch.zeros_like(dst[0].weight)  # (F, F, 3, 3, 3)
    c = w.shape[-1] // 2
    w[..., c, c, c] = src[0].weight[..., 0, 0, 0]
    dst[0].weight.copy_(w)
    dst[0].bias.copy_(src[0].bias)
    dst[2].weight.copy_(src[2].weight)
    dst[2].bias.copy_(src[2].bias)
