"""``SVLDRLEnv``: the single environment, a batch-of-one view of ``SVLDRLVectorEnv``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from .config import EnvConfig
from .vector_env import SVLDRLVectorEnv, StepBeforeResetError


class SVLDRLEnv(gym.Env):
    """One environment; every option of ``SVLDRLVectorEnv`` applies (see its docstring).

    Observation (C, D, H, W) float32; action (D, H, W) integers; reward float; ``info`` holds
    scalars and the per-voxel ``reward_map`` (D, H, W). Episodes are truncated after
    ``max_steps``; call ``reset()`` then.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, render_mode: str | None = None, *, config: EnvConfig | None = None, **kwargs):
        kwargs.pop("autoreset_mode", None)
        if config is not None:  # the vector env takes a config or keywords: this env's settings go into it
            config = EnvConfig.from_any(config)
            kwargs["config"] = config.replace(autoreset_mode=AutoresetMode.DISABLED,
                                              render_mode=render_mode or config.render_mode)
        else:
            kwargs.update(render_mode=render_mode, autoreset_mode=AutoresetMode.DISABLED)
        self._vec = SVLDRLVectorEnv(1, **kwargs)
        self.render_mode = self._vec.render_mode
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self._needs_reset = True

    # The public attributes of the batched core, seen from the single env.
    channel_names = property(lambda self: self._vec.channel_names)
    action_names = property(lambda self: self._vec.action_names)
    patch_shape = property(lambda self: self._vec.patch_shape)
    max_steps = property(lambda self: self._vec.max_steps)
    device = property(lambda self: self._vec.device)
    config = property(lambda self: self._vec.config)
    vector_env = property(lambda self: self._vec)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # The core draws its episode key from this env's own generator: seeding stays Gymnasium's.
        self._vec._rngs[0] = self.np_random
        self._vec._reset_rows(np.array([0]))
        self._needs_reset = False
        obs = self._vec._observe()[0]
        return self._vec._out(obs, fresh=True), self._squeeze(self._vec._info(self._vec._metrics()))

    def step(self, action):
        if self._needs_reset and self._vec._state is None:
            raise StepBeforeResetError("step() called before reset(): call reset() first")
        a = action[None] if hasattr(action, "shape") and tuple(action.shape) == self._vec.patch_shape else action
        if not hasattr(a, "shape") or tuple(a.shape) != (1, *self._vec.patch_shape):
            shape = getattr(action, "shape", None)
            shape = tuple(shape) if shape is not None else type(action).__name__
            raise ValueError(f"action must have shape {self._vec.patch_shape} (D, H, W), got {shape}")
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
