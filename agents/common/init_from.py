"""Warm starts (``init_from``): an RL trainer starts from the weights of a trained ``PolicyValueNet``.

The source is a ``checkpoint.pt`` (or its run folder) of the ``supervised`` control, of vA3C or
of voxel-PPO: all three train the same network (``agents.common.networks.PolicyValueNet``), so
their files carry the same weights under the same names. Only the network is taken -- not
the optimiser state, update counter, budget or vA3C's reward-map convolution: a warm-started
run is a fresh run whose network starts where the checkpoint ended.

A checkpoint of another network shape (backbone, width, depth, ConvGRU, observation channels,
number of actions) is refused with one ``ValueError`` line naming both shapes, before anything
is built or written. Files are read tensor-only (``agents.common.checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from agents.common.checkpoint import load_checkpoint, resolve_checkpoint, validate_state_dict

__all__ = ["INIT_KINDS", "SHAPE_KEYS", "read_init", "net_shape", "check_same_network", "load_network", "record"]

#: checkpoint kinds whose network a warm start can take (the agents that train a PolicyValueNet)
INIT_KINDS = ("supervised", "va3c", "voxel-ppo")
#: what makes two networks the same shape (``PolicyValueNet.config``)
SHAPE_KEYS = ("backbone", "width", "depth", "convgru", "in_channels", "n_actions")


def read_init(path) -> dict:
    """The checkpoint a warm start takes its network from: a file or run folder of
    ``INIT_KINDS`` -> {"path", "kind", "net" (its ``PolicyValueNet.config``), "weights" (state dict)}.
    Raises FileNotFoundError or CheckpointError (a ValueError), one line naming the file."""
    ck = load_checkpoint(resolve_checkpoint(path), INIT_KINDS)
    net, weights = ck["config"].get("net"), ck["tensors"].get("model")
    if not isinstance(net, dict) or weights is None:
        raise ValueError(f"{ck['path']}: init_from checkpoint lacks the network config or weights")
    return {"path": str(ck["path"]), "kind": ck["kind"], "net": net, "weights": weights}


def net_shape(net_config: dict) -> str:
    """``PolicyValueNet.config`` -> "backbone=unet width=8 depth=3 convgru=False in_channels=6 n_actions=4"."""
    return " ".join(f"{k}={net_config.get(k)}" for k in SHAPE_KEYS)


def check_same_network(init: dict, net_config: dict, hint: str = "give the run the checkpoint's backbone, "
                                                                  "width and depth") -> None:
    """ValueError (one line, both shapes) unless the checkpoint's network has the shape ``net_config``."""
    a, b = init["net"], net_config
    extra = sorted((set(a) | set(b)) - set(SHAPE_KEYS))  # backbone keywords beyond the usual ones
    if any(a.get(k) != b.get(k) for k in (*SHAPE_KEYS, *extra)):
        raise ValueError(f"init_from {init['path']}: its network ({net_shape(a)}) is not the shape of this run's "
                         f"({net_shape(b)}); {hint}")


def load_network(net: torch.nn.Module, init: dict) -> None:
    """Copy the checkpoint's weights into ``net`` (a ``PolicyValueNet``) after checking the shape,
    the keys, the dtypes and that every value is finite (all or nothing)."""
    check_same_network(init, net.config)
    validate_state_dict(net, init["weights"], init["path"], "network weights")
    net.load_state_dict(init["weights"])


def record(init: dict | None) -> dict | None:
    """What a run's ``config.json`` records of its warm start (None: trained from scratch)."""
    if init is None:
        return None
    return {"path": str(Path(init["path"]).resolve()), "kind": init["kind"], "net": dict(init["net"])}
