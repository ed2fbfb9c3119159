"""``SB3VecEnv``: the native batched environment seen through stable-baselines3's ``VecEnv`` API.

SB3 steps a ``VecEnv`` and expects:
- a FLAT action space: SB3 rejects multi-dimensional ``MultiDiscrete`` nvec, so the per-voxel
  (D, H, W) action becomes ``MultiDiscrete([K] * D*H*W)``; the adapter reshapes it back to
  (n, D, H, W) before stepping the native env;
- autoreset in the same step, with the last observation of a finished episode in
  ``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]`` (SB3 bootstraps
  the value of truncated episodes from it) -- the native env runs in ``AutoresetMode.SAME_STEP``
  and reports ``final_obs`` / ``final_info``, which are translated here;
- a list of per-env info dicts (SB3's ``Monitor`` convention ``infos[i]["episode"] = {"r", "l",
  "t"}`` is filled here, so ``rollout/ep_rew_mean`` is logged without a Monitor wrapper).

Memory: the action space has dtype int8 (K = 4 fits), so SB3's rollout buffer stores actions in
1 byte per voxel instead of 8 (int64) -- 32 KiB instead of 256 KiB per 32^3 step;
``obs_dtype=np.float16`` halves the observation buffer as well (the policy casts back to
float32; fp16 keeps ~3 significant digits of intensities in [0, 1]).

The native env is ONE batched object, not n separate envs: ``get_attr`` returns its attribute
once per requested index, ``set_attr`` sets it once, and ``env_method`` calls the method once,
splitting the result per index when it is a sequence of length ``num_envs`` (e.g.
``render``'s tuple of frames), replicating it otherwise.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from svl_env import EnvConfig, SVLDRLVectorEnv
from svl_env.render import render_frame

# info entries that are (n,) scalars per env and are copied into SB3's per-env info dicts
_SCALAR_SKIP = ("final_obs", "final_info")


class SB3VecEnv(VecEnv):
    """stable-baselines3 ``VecEnv`` over ``SVLDRLVectorEnv`` (SAME_STEP autoreset).

    Args:
        env_kwargs: keyword arguments of ``SVLDRLVectorEnv`` (data, patch_size, noise, ...) or an
            ``EnvConfig``, used when ``env`` is not given.
        num_envs: number of environments n.
        env: an existing ``SVLDRLVectorEnv`` in ``AutoresetMode.SAME_STEP`` (numpy outputs), or a
            ``gymnasium.vector.VectorWrapper`` around one (e.g. ``svl_env.wrappers.VectorScaleReward``):
            steps and resets go through the wrapper, attributes come from the native env.
        obs_dtype: dtype of observations handed to SB3 (float32, or float16 to halve the
            rollout buffer).

    Spaces: observation ``Box(0, 1, (C, D, H, W), obs_dtype)``; action
    ``MultiDiscrete([K] * (D*H*W), dtype=int8)``. ``step`` returns obs (n, C, D, H, W),
    rewards (n,) float32, dones (n,) bool, infos (list of n dicts).
    """

    def __init__(self, env_kwargs: EnvConfig | dict | None = None, num_envs: int = 8, *,
                 env: SVLDRLVectorEnv | None = None, obs_dtype=np.float32):
        if env is None:
            cfg = EnvConfig.from_any(env_kwargs)
            if cfg.return_tensors:
                raise ValueError("SB3VecEnv needs numpy outputs (return_tensors=False)")
            env = SVLDRLVectorEnv(num_envs, config=cfg.replace(autoreset_mode=AutoresetMode.SAME_STEP))
        native = env.unwrapped
        if not isinstance(native, SVLDRLVectorEnv):
            raise ValueError(f"SB3VecEnv needs an SVLDRLVectorEnv (or a wrapper of one), got {type(native).__name__}")
        if native.autoreset_mode != AutoresetMode.SAME_STEP or native.return_tensors:
            raise ValueError("SB3VecEnv needs an SVLDRLVectorEnv with autoreset_mode=SAME_STEP and numpy outputs")
        self.venv = env  # what is stepped: the native env or a wrapper around it
        self.native = native  # its attributes (patch shape, action names, state tensors)
        self.obs_dtype = np.dtype(obs_dtype)
        if self.obs_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"obs_dtype must be float32 or float16, got {self.obs_dtype}")
        self.patch_shape = tuple(native.patch_shape)
        self.n_actions = len(native.action_names)
        n_vox = int(np.prod(self.patch_shape))
        obs_space = spaces.Box(0.0, 1.0, env.single_observation_space.shape, self.obs_dtype)
        act_dtype = np.int8 if self.n_actions <= 127 else np.int16
        act_space = spaces.MultiDiscrete(np.full(n_vox, self.n_actions, dtype=act_dtype), dtype=act_dtype)
        super().__init__(env.num_envs, obs_space, act_space)
        self._actions: np.ndarray | None = None
        self._ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ API
    def reset(self) -> np.ndarray:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = next((o for o in self._options if o), None)
        obs, info = self.venv.reset(seed=seeds, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = self._split_info(info, np.ones(self.num_envs, dtype=bool))
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0
        return obs.astype(self.obs_dtype, copy=False)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        a = np.asarray(self._actions)
        self._actions = None
        if a.size != self.num_envs * int(np.prod(self.patch_shape)):
            raise ValueError(f"expected {self.num_envs} x {int(np.prod(self.patch_shape))} actions, "
                             f"got shape {a.shape}")
        # SB3 hands back int64 (policy) or the space dtype; int8 is what the env needs at K=4.
        a = a.reshape(self.num_envs, *self.patch_shape).astype(self.action_space.dtype, copy=False)
        obs, reward, terminated, truncated, info = self.venv.step(a)
        dones = np.logical_or(terminated, truncated)
        self._ep_return += reward
        self._ep_len += 1
        infos = self._split_info(info, np.ones(self.num_envs, dtype=bool))
        if dones.any():
            final = info["final_info"]
            now = round(time.perf_counter() - self._t0, 6)
            for i in np.flatnonzero(dones):  # only the envs that finished an episode (<= n per step)
                d = infos[i]
                # the native info of a reset env describes its NEW episode: that is SB3's reset info
                self.reset_infos[i] = {k: v for k, v in d.items() if k != "reward_map"}
                # ... and the step info becomes the finished episode's, with SB3's conventions
                d.update({k: _item(v[i]) for k, v in final.items() if not k.startswith("_") and final["_" + k][i]})
                d["terminal_observation"] = np.asarray(info["final_obs"][i]).astype(self.obs_dtype, copy=False)
                d["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                d["episode"] = {"r": float(self._ep_return[i]), "l": int(self._ep_len[i]), "t": now}
            self._ep_return[dones] = 0.0
            self._ep_len[dones] = 0
        return obs.astype(self.obs_dtype, copy=False), reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self._owner(attr_name), attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self._owner(attr_name), attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self._owner(method_name), method_name)(*method_args, **method_kwargs)
        idx = list(self._get_indices(indices))
        if isinstance(result, (list, tuple)) and len(result) == self.num_envs:
            return [result[i] for i in idx]
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class, indices: VecEnvIndices = None) -> list[bool]:
        return [isinstance(self.venv, wrapper_class) for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One ``rgb_array`` frame per env (orthogonal slices), whatever the env's render_mode."""
        s = self.native.state_tensors()
        truth = s.get("truth")
        return [render_frame(s["image"][i], s["mask"][i], s["annotation"][i], None if truth is None else truth[i])
                for i in range(self.num_envs)]

    # -------------------------------------------------------------- helpers
    def _owner(self, name: str):
        """The wrapper when it has ``name`` itself, else the native env (gymnasium's vector
        wrappers do not forward attributes)."""
        return self.venv if self.venv is self.native or hasattr(self.venv, name) else self.native

    def _split_info(self, info: dict, rows: np.ndarray) -> list[dict]:
        """Gymnasium's vector info (arrays + ``_key`` masks) -> SB3's list of per-env dicts.

        Per-voxel entries (``reward_map``) are views into the batch array, not copies.
        """
        out: list[dict] = [{} for _ in range(self.num_envs)]
        # One pass per info key; the per-env dicts are what SB3's API asks for (n small dicts).
        for k, v in info.items():
            if k.startswith("_") or k in _SCALAR_SKIP:
                continue
            present = np.asarray(info.get("_" + k, rows), dtype=bool) & rows
            values = v.tolist() if isinstance(v, np.ndarray) and v.ndim == 1 else v
            for i in np.flatnonzero(present):
                out[i][k] = values[i]
        return out

def _item(x):
    """numpy scalar -> Python scalar; arrays stay arrays."""
    return x.item() if isinstance(x, np.generic) or (isinstance(x, np.ndarray) and x.ndim == 0) else x
