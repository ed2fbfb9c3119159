"""``SVLDRLEnv``: the single environment, a batch-of-one view of ``SVLDRLVectorEnv``."""

from __future__ import annotations

import sys

import gymnasium as gym
from gymnasium.envs.registration import make as _gym_make
from gymnasium.vector import AutoresetMode

from .config import EnvConfig
from .vector_env import SVLDRLVectorEnv, StepBeforeResetError


class SVLDRLEnv(gym.Env):
    """One environment; every option of ``SVLDRLVectorEnv`` applies (see its docstring).

    Observation (C, D, H, W) float32; action (D, H, W) integers; reward float; ``info`` holds
    scalars and the per-voxel ``reward_map`` (D, H, W). Episodes are truncated after
    ``max_steps``; call ``reset()`` then. Under ``gym.make("SVLDRL-v0", max_episode_steps=N)``
    the env's ``max_steps`` is N, so the ``time`` channel, the truncation and ``env.spec`` agree.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, render_mode: str | None = None, *, config: EnvConfig | None = None, **kwargs):
        kwargs.pop("autoreset_mode", None)
        limit = _make_time_limit()  # gym.make's max_episode_steps, which it hands only to its TimeLimit
        if config is not None:  # the vector env takes a config or keywords: this env's settings go into it
            config = EnvConfig.from_any(config)
            if limit is not None and config.max_steps is None and config.max_episode_steps is None:
                config = config.replace(max_steps=limit)
            kwargs["config"] = config.replace(autoreset_mode=AutoresetMode.DISABLED,
                                              render_mode=render_mode or config.render_mode)
        else:
            if limit is not None and "max_steps" not in kwargs and "max_episode_steps" not in kwargs:
                kwargs["max_steps"] = limit
            kwargs.update(render_mode=render_mode, autoreset_mode=AutoresetMode.DISABLED)
        self._vec = SVLDRLVectorEnv(1, **kwargs)
        self.render_mode = self._vec.render_mode
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space

    # The public attributes of the batched core, seen from the single env.
    channel_names = property(lambda self: self._vec.channel_names)
    action_names = property(lambda self: self._vec.action_names)
    patch_shape = property(lambda self: self._vec.patch_shape)
    max_steps = property(lambda self: self._vec.max_steps)
    num_actions = property(lambda self: self._vec.num_actions)
    device = property(lambda self: self._vec.device)
    config = property(lambda self: self._vec.config)
    vector_env = property(lambda self: self._vec)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # The core draws its episode key from this env's own generator: seeding stays Gymnasium's.
        obs, info = self._vec.reset_from([self.np_random])
        return obs[0], self._squeeze(info)

    def step(self, action):
        if self._vec.needs_reset:
            raise StepBeforeResetError("step() called before reset(): call reset() first")
        a = action[None] if hasattr(action, "shape") and tuple(action.shape) == self.patch_shape else action
        if not hasattr(a, "shape") or tuple(a.shape) != (1, *self.patch_shape):
            shape = getattr(action, "shape", None)
            shape = tuple(shape) if shape is not None else type(action).__name__
            raise ValueError(f"action must have shape {self.patch_shape} (D, H, W), got {shape}")
        obs, reward, terminated, truncated, info = self._vec.step(a)
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._squeeze(info)

    @staticmethod
    def _squeeze(info: dict) -> dict:
        out = {}
        for k, v in info.items():
            if k.startswith("_"):
                continue
            x = v[0]
            out[k] = x.item() if getattr(x, "ndim", 1) == 0 and hasattr(x, "item") else x
        return out

    def state_tensors(self) -> dict:
        """Batch-of-one state tensors (see ``SVLDRLVectorEnv.state_tensors``)."""
        return self._vec.state_tensors()

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'")
            return None
        return self._vec.render()[0]

    def close(self):
        self._vec.close()


def _make_time_limit() -> int | None:
    """The ``max_episode_steps`` that ``gym.make`` is applying as a ``TimeLimit``, when it is the
    caller constructing this env; else None.

    Gymnasium passes that value only to the outer ``TimeLimit`` wrapper, not to the constructor,
    so without this the env would keep its own 5 steps and its ``time`` channel would end at
    3/5 under ``max_episode_steps=3``. ``make`` is found by its code object (the frame that calls
    the constructor), and its local of that name holds the argument or, when the argument is
    None, the registered spec's value is what ``make`` applies (the env's default already).
    """
    caller = sys._getframe(2)  # _make_time_limit <- SVLDRLEnv.__init__ <- (type.__call__ is C) make
    if caller.f_code is not _gym_make.__code__:
        return None
    n = caller.f_locals.get("max_episode_steps")
    return n if isinstance(n, int) and n > 0 else None
