"""Pieces every agent shares: the policy protocol, networks, checkpoints, run bookkeeping."""

from agents.common.policy import Policy, as_tensor, channel

__all__ = ["Policy", "as_tensor", "channel"]
