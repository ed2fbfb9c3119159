"""Reward scaling that keeps the per-voxel maps consistent with the scalar reward.

Gymnasium's ``NormalizeReward`` and ``ClipReward`` (single and vector) change the scalar reward
only: ``info["reward_map"]`` and ``info["action_rewards"]`` pass through unchanged, so after them
the map no longer sums to the reward. The wrappers here multiply the reward and every map by the
same factor, the maps in a SAME_STEP ``final_info`` included, so ``reward_map.sum() == reward``
(to float32 rounding) still holds:

- ``ScaleReward`` / ``VectorScaleReward``: a constant factor.
- ``NormalizeReward`` / ``VectorNormalizeReward``: Gymnasium's wrappers of those names (the
  reward divided by the running std of the discounted return), the maps divided alike.

A clipped reward has no per-voxel decomposition: there is no consistent ``ClipReward``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

MAP_KEYS = ("reward_map", "action_rewards")  # the info entries that decompose the reward


def scaled_info(info: dict, scale: float) -> dict:
    """A copy of ``info`` with the entries of ``MAP_KEYS`` (also inside ``final_info``) times
    ``scale``; numpy arrays or torch tensors, dtype kept."""
    out = dict(info)
    for k in MAP_KEYS:
        if k in out:
            out[k] = out[k] * scale
    if isinstance(out.get("final_info"), dict):
        out["final_info"] = scaled_info(out["final_info"], scale)
    return out


def _check_scale(scale) -> float:
    scale = float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return scale


class ScaleReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Single env: ``reward * scale``, ``info["reward_map"] * scale``, ``info["action_rewards"] * scale``.

    Args:
        env: a ``SVLDRL-v0`` env (any wrapper stack whose info carries the maps).
        scale: positive constant, e.g. 10.0 to bring per-step rewards of ~0.01-0.1 towards 1.
    """

    def __init__(self, env: gym.Env, scale: float):
        gym.utils.RecordConstructorArgs.__init__(self, scale=scale)
        gym.Wrapper.__init__(self, env)
        self.scale = _check_scale(scale)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward * self.scale, terminated, truncated, scaled_info(info, self.scale)


class VectorScaleReward(gym.vector.VectorWrapper):
    """Vector env: rewards (B,) and the maps (B, ...) times ``scale`` (see ``ScaleReward``)."""

    def __init__(self, env: gym.vector.VectorEnv, scale: float):
        super().__init__(env)
        self.scale = _check_scale(scale)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return obs, reward * self.scale, terminated, truncated, scaled_info(info, self.scale)


class NormalizeReward(gym.wrappers.NormalizeReward):
    """Single env: ``gymnasium.wrappers.NormalizeReward`` (same arguments, same rewards), with
    ``reward_map`` and ``action_rewards`` divided by the same running std."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, scaled_info(info, _inverse_std(self))


class VectorNormalizeReward(gym.wrappers.vector.NormalizeReward):
    """Vector env: ``gymnasium.wrappers.vector.NormalizeReward`` with the maps divided alike."""

    def step(self, actions):
        obs, reward, terminated, truncated, info = super().step(actions)
        return obs, reward, terminated, truncated, scaled_info(info, _inverse_std(self))


def _inverse_std(wrapper) -> float:
    """The factor Gymnasium's NormalizeReward applied in the step just taken (its statistics are
    updated before it divides), as a Python float so float32 maps stay float32."""
    return float(1.0 / np.sqrt(wrapper.return_rms.var + wrapper.epsilon))
