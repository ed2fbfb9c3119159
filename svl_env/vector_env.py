"""``SVLDRLVectorEnv``: the one batched implementation of the SVL-DRL dynamics.

Every voxel of every environment is an agent. State, observation and reward live in
(B, ...) torch tensors on ``device``; a step is a handful of batched tensor ops plus one
host call that counts connected components. The single environment ``SVLDRLEnv`` is the
batch-of-one view of this class.
"""

from __future__ import annotations

from typing import Any

import dataclasses

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from . import memory
from . import metrics as M
from . import rng
from .config import CHANNEL_NAMES, RENDER_MODES, EnvConfig
from .dynamics import (apply_intensity_actions, box_sum, label_candidates, label_step, majority_from_box,
                       mean_from_box, neighbourhood_mean, segment)
from .noise import parse_noise
from .render import render_frame
from .reward import continuity_cost, counterfactual_rewards, objective, step_reward
from .data.sources import make_source
from .spaces import VoxelActions

_TAG_EPS = 30  # rng tag of the intensity actions' epsilon


class StepBeforeResetError(ValueError, gym.error.ResetNeeded):
    """``step`` was called before the first ``reset``."""


class SVLDRLVectorEnv(VectorEnv):
    """Voxel-level refinement of noisy 3D annotations, ``num_envs`` environments at once.

    Observation (per env): ``Box(0, 1, (C, D, H, W), float32)``, channels ``CHANNEL_NAMES``:
    image (current intensities), mask (current state f_t), annotation (the given labels),
    3x3x3 means of image and mask, and time t / max_steps.
    Action (per env): ``VoxelActions`` (a ``MultiDiscrete(np.full((D, H, W), K))``), one action
    per voxel from ``action_names`` (see ``svl_env.dynamics``); K is ``num_actions``. Batched:
    ``Box(0, K - 1, (B, D, H, W), int64)``, Gymnasium's ``batch_space`` of a MultiDiscrete.
    Reward (per env): the composite of ``svl_env.reward``; ``info["reward_map"]`` (B, D, H, W)
    sums to it exactly; ``info["action_rewards"]`` (B, K, D, H, W) with ``action_rewards=True``.

    Args:
        num_envs: batch size B.
        data: ``"phantom"`` (default, built in), a Decathlon folder, or a source object.
        patch_size: int or (D, H, W) voxels.
        noise: annotation noise spec (``svl_env.noise``); default ``"mt"`` when the truth is
            known, ``"none"`` when the data carries its own noisy labels.
        noise_ratio: fraction of episodes whose annotation is corrupted.
        action_set: ``"label"`` (default) or ``"intensity"`` (needs ``segmenter``).
        segmenter: torch module, (B, 1, D, H, W) image -> logits; foreground where > 0.
        reward_target: ``"clean"`` (truth; simulated-noise benchmark) or ``"annotation"``.
        initial_mask: ``"annotation"`` or ``"segmenter"``; default annotation for label
            actions, segmenter for intensity actions.
        max_steps: truncation length (default 5, PixelRL's t_max); ``max_episode_steps`` is an
            alias that ``max_steps`` overrides (``make_vec`` fills it from the registered spec).
        reward_weights: dict of ``RewardWeights`` fields (w_dice, w_cont, w_cc, w_tv).
        action_rewards: also return the counterfactual per-action rewards (label actions).
        device: torch device of all state tensors.
        return_tensors: return torch tensors on ``device`` instead of numpy arrays.
        autoreset_mode: ``AutoresetMode`` NEXT_STEP (default), SAME_STEP or DISABLED.
        **data_options: passed to the source (phantom: families, modalities; folder:
            labels="clean"|"noisy", label_value, modality, fg_prob).
        config: an ``svl_env.EnvConfig`` holding the options above, instead of them (passing
            both is a TypeError). Either way the env keeps its options as ``env.config``.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 2, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, *, data="phantom", patch_size=32, noise=None, noise_ratio: float = 1.0,
                 action_set: str = "label", segmenter: torch.nn.Module | None = None,
                 reward_target: str = "clean", initial_mask: str | None = None, max_steps: int | None = None,
                 reward_weights=None, action_rewards: bool = False, device="cpu", return_tensors: bool = False,
                 render_mode: str | None = None, autoreset_mode=AutoresetMode.NEXT_STEP,
                 max_episode_steps: int | None = None, config: EnvConfig | None = None, **data_options):
        options = EnvConfig(data=data, patch_size=patch_size, noise=noise, noise_ratio=noise_ratio,
                            action_set=action_set, segmenter=segmenter, reward_target=reward_target,
                            initial_mask=initial_mask, max_steps=max_steps, reward_weights=reward_weights,
                            action_rewards=action_rewards, device=device, return_tensors=return_tensors,
                            render_mode=render_mode, autoreset_mode=autoreset_mode,
                            max_episode_steps=max_episode_steps, data_options=data_options)
        if config is not None:
            given = options.to_kwargs()
            # make_vec passes the registered spec's max_episode_steps along with any config= : an
            # alias, used only where the config sets no max_steps of its own
            alias = given.pop("max_episode_steps", None)
            if given:
                raise TypeError(f"pass the env options in config= or as keywords, not both (got config= and "
                                f"{sorted(given)}); config.replace(...) makes a changed copy")
            config = EnvConfig.from_any(config)
            if alias is not None and config.max_steps is None and config.max_episode_steps is None:
                config = config.replace(max_episode_steps=alias)
        config = options if config is None else config
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self.config = config.validate()
        self.num_envs = int(num_envs)
        self.device = config.torch_device
        self.patch_shape = config.patch_shape
        self.source = make_source(config.data, **config.data_options)
        min_patch = int(getattr(self.source, "min_patch_size", 2))
        if min(self.patch_shape) < min_patch:  # found now, not at the first reset
            raise ValueError(f"patch_size {self.patch_shape} is too small for {type(self.source).__name__} "
                             f"(at least {min_patch} voxels per axis)")
        self.max_steps = config.episode_steps
        self.action_set = config.action_set
        self.action_names = config.action_names
        self.segmenter = config.segmenter
        self.initial_mask = config.resolved_initial_mask
        self.action_rewards = bool(config.action_rewards)
        self.reward_target = config.reward_target
        if self.reward_target == "clean" and not self.source.has_truth:
            raise ValueError("reward_target='clean' needs the truth, but this data carries only (noisy) annotations; "
                             "use reward_target='annotation'")
        self.weights = config.weights
        noise = config.noise
        if noise is None:
            noise = "mt" if self.source.has_truth and not self.source.has_annotation else "none"
        self.noise = parse_noise(noise)
        self.noise_ratio = float(config.noise_ratio)
        if self.source.has_annotation and self.noise.name != "none":
            raise ValueError("this data already carries noisy annotations; use noise='none'")
        self.render_mode = config.render_mode
        self.autoreset_mode = config.autoreset
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.return_tensors = bool(config.return_tensors)

        self.channel_names = CHANNEL_NAMES
        k = len(self.action_names)
        # Refuse a batch that cannot fit before allocating it (svl_env.memory), not by an OOM kill;
        # the spaces alone hold 14 float32 volumes per env (Box bounds, MultiDiscrete nvec).
        memory.check(memory.env_bytes(self.num_envs, self.patch_shape, k, self.action_rewards, self.device),
                     memory.describe_batch(self.num_envs, self.patch_shape), "lower num_envs or patch_size",
                     self.device)
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (len(CHANNEL_NAMES), *self.patch_shape), np.float32)
        self.single_action_space = VoxelActions(self.patch_shape, k)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._state: dict[str, Any] | None = None
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._buffers = memory.Recycler()  # observations: see Recycler

    # ------------------------------------------------------------------ reset
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        """Reset all environments (or those in ``options["reset_mask"]``).

        ``seed``: an int s seeds env i with s + i; a list gives one seed per env. With a
        ``reset_mask``, only the rows being reset take their seed (SyncVectorEnv's rule).
        Returns (obs (B, C, D, H, W), info of (B,) arrays).
        """
        if isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i for i in range(self.num_envs)]
        if seed is not None and len(seed) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} seeds, got {len(seed)}")
        mask = None if options is None else options.get("reset_mask")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        else:
            mask = np.ones(self.num_envs, dtype=bool)
        if self._state is None and not mask.all():
            raise StepBeforeResetError("the first reset must reset every environment (no reset_mask)")
        for i in range(self.num_envs):
            # only the rows being reset take their seed (as SyncVectorEnv seeds only the masked envs)
            if seed is not None and seed[i] is not None and mask[i]:
                self._rngs[i] = seeding.np_random(seed[i])[0]
            elif self._rngs[i] is None:
                self._rngs[i] = seeding.np_random()[0]
        return self._start(mask)

    def reset_from(self, generators) -> tuple:
        """Reset every environment, env i drawing its episode key from ``generators[i]`` (a
        ``np.random.Generator``, env i's own from then on): for a wrapper that owns the seeding,
        as ``SVLDRLEnv`` passes Gymnasium's ``np_random``. Returns what ``reset`` returns."""
        if len(generators) != self.num_envs:
            raise ValueError(f"reset_from needs {self.num_envs} generators, got {len(generators)}")
        self._rngs = list(generators)
        return self._start(np.ones(self.num_envs, dtype=bool))

    def _start(self, mask: np.ndarray) -> tuple:
        self._reset_rows(np.flatnonzero(mask))
        self._autoreset[mask] = False
        return self._out(self._observe(), fresh=True), self._info(self._metrics())

    def _reset_rows(self, rows: np.ndarray) -> None:
        """Start new episodes in ``rows``: fresh key from each env's own generator."""
        # One small numpy draw per env being reset: keeps env i's stream its own (rng module doc).
        keys = rng.as_keys([rng.draw_key(self._rngs[i]) for i in rows], self.device)
        batch = self.source.sample(keys, self.patch_shape)
        truth = batch.truth
        if batch.annotation is not None:
            annotation, corrupted = batch.annotation, torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        else:
            noisy, corrupted = self.noise(truth.bool(), keys, self.noise_ratio)
            annotation = noisy.float()
        image = batch.image.float()
        mask = segment(self.segmenter, image) if self.initial_mask == "segmenter" else annotation
        mask8 = mask.to(torch.uint8)
        target = truth if self.reward_target == "clean" else annotation
        target8 = target.to(torch.uint8)
        ann8 = mask8 if mask is annotation else annotation.to(torch.uint8)
        dice_ann = None if truth is None else M.dice(ann8, target8 if target is truth else truth.to(torch.uint8))
        # The {0,1} states live as bytes: the mask (mask8), its 3x3x3 counts (mask_box3, for the
        # majority action and the mask_mean3 channel) and the target (target8). A step's work on
        # them is byte arithmetic; float32 copies are made only for the observation. Label
        # actions never edit the image, so image0 and image are then one tensor.
        image_t = image.clone() if self.action_set == "intensity" else image
        new = dict(keys=keys, image0=image, image=image_t, image_mean3=neighbourhood_mean(image),
                   mask8=mask8, mask_box3=box_sum(mask8),
                   annotation=annotation, truth=truth, target=target, target8=target8, spacing=batch.spacing,
                   corrupted=corrupted, dice_annotation_clean=dice_ann,
                   t=torch.zeros(len(rows), dtype=torch.int64, device=self.device), names=batch.names)
        obj = objective(mask8, target8)
        if self._state is None or len(rows) == self.num_envs:
            self._state, self._obj = new, obj
            return
        idx = torch.as_tensor(rows, device=self.device)
        for key, value in new.items():
            if key == "names":
                for j, r in enumerate(rows):
                    self._state["names"][r] = value[j]
            elif value is not None:
                self._state[key][idx] = value
        self._obj.index_put(idx, obj)

    # ------------------------------------------------------------------- step
    def _check_actions(self, actions) -> torch.Tensor:
        expected = (self.num_envs, *self.patch_shape)
        if torch.is_tensor(actions):
            a = actions
        else:
            try:
                a = np.asarray(actions)
            except Exception as exc:  # ragged lists and the like
                raise ValueError(f"actions must be an integer array of shape {expected}: {exc}") from None
            if a.dtype == object:
                raise ValueError(f"actions must be an integer array of shape {expected}, got dtype object")
            a = torch.from_numpy(a) if a.dtype.kind in "iub" else a
        if tuple(a.shape) != expected:
            raise ValueError(f"actions must have shape {expected} (num_envs, D, H, W), got {tuple(a.shape)}")
        dtype_ok = a.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8) if torch.is_tensor(a) \
            else False
        if not dtype_ok:
            raise ValueError(f"actions must be integers (one action index per voxel), got dtype {a.dtype}")
        a = a.to(self.device)
        k = len(self.action_names)
        # On CPU: the integers' bits read as unsigned are < k iff every action is in [0, k) --
        # one vectorised numpy pass, where torch's int64 aminmax takes 2.5x as long.
        if a.device.type != "cpu" or int((x := a.numpy()).view(f"u{x.itemsize}").max()) >= k:
            lo, hi = (int(v) for v in torch.aminmax(a))
            if lo < 0 or hi >= k:
                raise ValueError(f"actions must lie in [0, {k - 1}] ({', '.join(self.action_names)}), got {lo}..{hi}")
        return a

    def step(self, actions):
        """Apply one action per voxel in every environment.

        Args: actions (B, D, H, W) integers in [0, K). Returns obs (B, C, D, H, W) float32,
        reward (B,) float64, terminated (B,) bool (always False: episodes end by truncation),
        truncated (B,) bool, info.
        """
        if self._state is None:
            raise StepBeforeResetError("step() called before reset(): call reset() first")
        a = self._check_actions(actions)
        s, shape = self._state, self.patch_shape
        # An env that starts a new episode at this step (NEXT_STEP autoreset) discards its
        # transition -- SyncVectorEnv resets such an env instead of stepping it -- so only the
        # other rows are stepped (at 64^3 a whole-batch transition is ~200 ms of CPU).
        resetting = self._autoreset.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP \
            else np.zeros(self.num_envs, dtype=bool)
        live = np.flatnonzero(~resetting)
        reward = np.zeros(self.num_envs)
        if len(live) == self.num_envs:
            r, extra = self._transition(a, None)
            reward[:] = r.cpu().numpy()
        else:
            extra = {"reward_map": memory.empty((self.num_envs, *shape), device=self.device).zero_()}
            if self.action_rewards:
                extra["action_rewards"] = torch.zeros((self.num_envs, len(self.action_names), *shape),
                                                      device=self.device)
            if len(live):
                idx = torch.as_tensor(live, device=self.device)
                r, maps = self._transition(a, idx)
                reward[live] = r.cpu().numpy()
                for k, v in maps.items():
                    extra[k][idx] = v
        s["t"] = s["t"] + 1
        truncated = (s["t"] >= self.max_steps).cpu().numpy()
        terminated = np.zeros(self.num_envs, dtype=bool)
        if resetting.any():
            rows = np.flatnonzero(resetting)
            self._reset_rows(rows)
            truncated[rows] = False
        metrics = self._metrics()
        info = self._info(metrics, extra)
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            rows = np.flatnonzero(done)
            final_obs = self._observe()
            info["final_obs"] = np.empty(self.num_envs, dtype=object)
            for r in rows:
                info["final_obs"][r] = self._out(final_obs[r], fresh=True)
            info["_final_obs"] = done.copy()
            info["final_info"] = self._info(metrics, extra, rows=rows)
            info["_final_info"] = done.copy()
            self._reset_rows(rows)
            # Reset envs report their new episode's metrics (as SyncVectorEnv reports reset infos);
            # the step-only entries (reward maps) of those envs live in final_info.
            idx = torch.as_tensor(rows, device=self.device) if self.return_tensors else rows
            for k, v in self._info(self._metrics()).items():
                if not k.startswith("_"):
                    info[k][idx] = v[idx]
            for k in extra:
                info["_" + k][rows] = False
        elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = done
        obs = self._observe()
        return self._out(obs, fresh=True), self._out(reward, fresh=True), terminated, truncated, info

    def _transition(self, a: torch.Tensor, idx: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """Apply actions ``a`` (B, D, H, W) to rows ``idx`` (all rows if None) and update
        their state. Returns their reward (n,) float64 and per-voxel maps (n, ...)."""
        s, obj = self._state, self._obj

        def rows(x):
            return x if idx is None else x[idx]

        mask8, a = rows(s["mask8"]), rows(a)
        prev_obj = obj if idx is None else obj.take(idx)
        if self.action_set == "label":
            if self.action_rewards:
                prev = mask8.float()
                cand = label_candidates(prev, mean_from_box(rows(s["mask_box3"])))
                new8 = torch.gather(cand, 1, a[:, None].long()).squeeze(1).to(torch.uint8)
            else:
                new8 = label_step(mask8, a.to(torch.uint8), majority_from_box(rows(s["mask_box3"])))
        else:
            eps = rng.uniform(rng.substream(rows(s["keys"]), _TAG_EPS, 0) + rows(s["t"]) * 7919, self.patch_shape)
            image = apply_intensity_actions(rows(s["image"]), a, eps)
            if idx is None:
                s["image"] = image
            else:
                s["image"][idx] = image
            new8 = segment(self.segmenter, image).to(torch.uint8)
        out = memory.empty(new8.shape, device=self.device)
        reward, reward_map, new_obj = step_reward(mask8, new8, rows(s["target8"]), prev_obj, self.weights, out=out)
        box = box_sum(new8)
        maps = {"reward_map": reward_map}
        if self.action_rewards:
            maps["action_rewards"] = counterfactual_rewards(prev, cand, rows(s["target"]), prev_obj, self.weights)
        if idx is None:
            s["mask8"], s["mask_box3"], self._obj = new8, box, new_obj
        else:
            s["mask8"][idx], s["mask_box3"][idx] = new8, box
            obj.index_put(idx, new_obj)
        return reward, maps

    # ------------------------------------------------------------ observation
    def _observe(self) -> torch.Tensor:
        s = self._state
        image_mean3 = s["image_mean3"] if self.action_set == "label" else neighbourhood_mean(s["image"])
        obs = self._buffers.empty("obs", (self.num_envs, len(CHANNEL_NAMES), *self.patch_shape), device=self.device)
        for c, x in ((0, s["image"]), (1, s["mask8"]), (2, s["annotation"]), (3, image_mean3)):
            obs[:, c] = x
        mean_from_box(s["mask_box3"], out=obs[:, 4])
        obs[:, 5] = (s["t"].float() / self.max_steps).view(-1, 1, 1, 1)
        return obs

    def _metrics(self) -> dict[str, torch.Tensor]:
        s, obj, w = self._state, self._obj, self.weights
        out = {"dice": obj.dice, "iou": obj.tp / (obj.n_pred + obj.n_target - obj.tp).clamp_min(1e-12),
               "continuity": continuity_cost(obj, w, M.surface_norm(self.patch_shape)),
               "n_components": obj.n_cc, "corrupted": s["corrupted"], "t": s["t"]}
        out["iou"] = torch.where(obj.n_pred + obj.n_target > 0, out["iou"], torch.ones_like(out["iou"]))
        if s["truth"] is not None:
            if self.reward_target == "clean":  # the objective already holds the counts vs truth
                out["dice_clean"], out["iou_clean"] = out["dice"], out["iou"]
            else:
                out["dice_clean"] = M.dice(s["mask8"], s["truth"])
                out["iou_clean"] = M.iou(s["mask8"], s["truth"])
            out["dice_annotation_clean"] = s["dice_annotation_clean"]
        return out

    def _info(self, metrics: dict, extra: dict | None = None, rows=None) -> dict:
        """Gymnasium vector info: (B,) arrays with ``_key`` masks (True where set)."""
        present = np.ones(self.num_envs, dtype=bool) if rows is None else np.isin(np.arange(self.num_envs), rows)
        info = {}
        for k, v in metrics.items():  # (B,) views of the state: copied
            info[k] = self._out(v)
            info["_" + k] = present.copy()
        for k, v in (extra or {}).items():  # per-voxel maps made by this step: handed over as they are
            info[k] = self._out(v, fresh=True)
            info["_" + k] = present.copy()
        return info

    def _out(self, x, fresh: bool = False):
        """numpy by default, torch on ``device`` with ``return_tensors``; never shares memory
        with the env's state. ``fresh``: ``x`` was made for this call, so no copy is needed
        (copying a 64^3 batch's observation costs a quarter of a step on CPU)."""
        if self.return_tensors:
            if not torch.is_tensor(x):
                return torch.as_tensor(x, device=self.device)
            return x if fresh else x.clone()
        if torch.is_tensor(x):
            x = x.detach()
            if x.device.type != "cpu":
                return x.cpu().numpy()  # the device-to-host copy is already a fresh array
            return x.numpy() if fresh else x.numpy().copy()
        return x if fresh else np.array(x, copy=True)

    # ---------------------------------------------------------------- helpers
    @property
    def num_actions(self) -> int:
        """K, the number of actions per voxel (``len(action_names)``)."""
        return len(self.action_names)

    @property
    def needs_reset(self) -> bool:
        """True before the first ``reset`` and after ``close``."""
        return self._state is None

    _spec = None

    @property
    def spec(self):
        return self._spec

    @spec.setter
    def spec(self, spec) -> None:
        # make_vec sets a copy of the registered spec (max_episode_steps=5) whatever length the
        # env was given: the spec reports the env's own.
        self._spec = None if spec is None else dataclasses.replace(spec, max_episode_steps=self.max_steps)

    def state_tensors(self) -> dict[str, torch.Tensor | None]:
        """The current batched state (tensors on ``device``; treat as read-only):
        image, image0, mask, annotation, truth (None if unknown), target, spacing, t, keys."""
        if self._state is None:
            raise StepBeforeResetError("no state before reset()")
        out = {k: self._state[k] for k in ("image", "image0", "annotation", "truth", "target", "spacing", "t", "keys")}
        out["mask"] = self._state["mask8"].float()  # the state is kept as bytes (see _reset_rows)
        return out

    @property
    def case_names(self) -> list[str]:
        return list(self._state["names"]) if self._state else []

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'")
            return None
        if self._state is None:
            raise StepBeforeResetError("render() called before reset()")
        s = self._state
        return tuple(render_frame(s["image"][i], s["mask8"][i].float(), s["annotation"][i],
                                  None if s["truth"] is None else s["truth"][i]) for i in range(self.num_envs))

    def close_extras(self, **kwargs):
        self._state = None
