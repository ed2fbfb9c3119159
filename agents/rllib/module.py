"""RLlib pieces of the per-voxel PPO agent (new API stack): distribution, RLModule, callbacks.

Imports Ray; ``agents.rllib.config.build_config`` imports this module only when it builds a
training config, so a trained policy (``agents.rllib.policy``) acts and loads without Ray.

``VoxelCategorical`` -- one independent categorical per voxel as ONE batched
``torch.distributions.Categorical`` over (B, V, K) logits (V = D*H*W voxels, K actions).
RLlib's ``TorchMultiCategorical`` builds one ``Categorical`` per entry of a ``MultiDiscrete``
space and loops over them in Python: 32768 distributions per 32^3 sample, far too slow.
Like the SB3 baseline (``agents.sb3.policy``), ``logp``/``entropy``/``kl`` are per-voxel MEANS
by default: PPO's ratio ``exp(logp_new - logp_old)`` of the exact joint (a sum over V voxels)
leaves the clip range after any update at 32^3; the mean makes it the geometric mean of the
per-voxel ratios and ``entropy_coeff`` a per-voxel coefficient. ``VoxelCategoricalSum`` is the
textbook joint distribution.

``VoxelPPOModule`` -- ``TorchRLModule`` + ``ValueFunctionAPI`` around ``agents.rllib.net.VoxelPPONet``
(the shared backbone of ``agents.common.networks``, a per-voxel policy head and a pooled value head).
RLlib's connectors hand the observation through unchanged: the default env-to-module pipeline
batches and tensorises (no flattening connector is added unless configured), so the module
sees (B, C, D, H, W) float32; the distribution's samples are (B, D, H, W) int64, the shape of
the env's ``MultiDiscrete(np.full((D, H, W), K))`` space, which RLlib's module-to-env pipeline
(``NormalizeAndClipActions`` acts on Box spaces only) passes to the vector env as they are.

``SVLCallbacks`` -- logs each finished episode's final Dice vs the truth and its gain over the
annotation (``env_runners/dice_clean``, ``env_runners/dice_gain``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDistribution
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

import svl_env  # noqa: F401  registers "SVLDRL-v0" in every process that unpickles this module (env runners)

from agents.common.distributions import VoxelTerms, batched_categorical, gumbel_max
from agents.common.precision import autocast
from agents.rllib.net import VoxelPPONet, net_config_for


class VoxelCategorical(VoxelTerms, TorchDistribution):
    """Independent categorical per voxel.

    ``from_logits(logits)``: logits (B, K, D, H, W) (what the conv head emits; any number of
    spatial dims). ``sample()`` -> (B, D, H, W) int64; ``logp(actions (B, D, H, W))``,
    ``entropy()``, ``kl(other)`` -> (B,), per-voxel terms reduced by ``reduction``
    ("mean" here, "sum" in ``VoxelCategoricalSum``). ``logp_map``/``entropy_map`` give the
    unreduced (B, V) terms. ``to_deterministic()`` samples the per-voxel argmax and keeps
    ``logp`` (RLlib's ``TorchDeterministic`` would return a (B, D, H, W) zero tensor).
    """

    def __init__(self, logits: torch.Tensor, deterministic: bool = False):
        if logits.dim() < 3:
            raise ValueError(f"logits must be (B, K, *spatial), got {tuple(logits.shape)}")
        self.spatial_shape = tuple(logits.shape[2:])
        self.deterministic = bool(deterministic)
        self.raw_logits = logits
        super().__init__(logits=logits)

    def _get_torch_distribution(self, logits: torch.Tensor) -> torch.distributions.Categorical:
        return batched_categorical(logits)

    @property
    def categorical(self) -> torch.distributions.Categorical:
        return self._dist

    @property
    def log_probs(self) -> torch.Tensor:
        """Normalised per-voxel log-probabilities (B, V, K)."""
        return self._dist.logits

    def logp(self, value: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._reduce(self.logp_map(value))

    def entropy(self, **kwargs) -> torch.Tensor:
        return self._reduce(self.entropy_map())

    def kl(self, other: "VoxelCategorical", **kwargs) -> torch.Tensor:
        p_log = self._dist.logits
        return self._reduce((p_log.exp() * (p_log - other._dist.logits)).sum(-1))

    def sample(self, *, sample_shape=None, **kwargs) -> torch.Tensor:
        if sample_shape not in (None, (), torch.Size()):
            raise NotImplementedError("VoxelCategorical draws one action per voxel (no sample_shape)")
        lg = self._dist.logits
        if self.deterministic:
            a = lg.argmax(-1)
        else:
            a = gumbel_max(lg, -1)
        return a.reshape(a.shape[0], *self.spatial_shape)

    def rsample(self, *, sample_shape=None, **kwargs):
        raise NotImplementedError("discrete per-voxel actions have no reparameterised sample")

    def to_deterministic(self) -> "VoxelCategorical":
        return type(self)(self.raw_logits, deterministic=True)

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        if not isinstance(space, gym.spaces.MultiDiscrete):
            raise ValueError(f"VoxelCategorical needs a MultiDiscrete space, got {space}")
        return int(np.asarray(space.nvec).sum())

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs) -> "VoxelCategorical":
        return cls(logits, **kwargs)


class VoxelCategoricalSum(VoxelCategorical):
    """The exact joint distribution: per-voxel terms SUMMED (log-prob of the whole action)."""

    reduction = "sum"


DISTRIBUTIONS = {"mean": VoxelCategorical, "sum": VoxelCategoricalSum}


class VoxelPPOModule(TorchRLModule, ValueFunctionAPI):
    """Per-voxel actor-critic for RLlib PPO on ``SVLDRL-v0``.

    Spaces: observation ``Box(C, D, H, W)``, action ``MultiDiscrete`` of shape (D, H, W) with
    one K for every voxel. ``model_config`` keys: backbone, width, depth, keep_bias,
    reduction ("mean"/"sum"), value_chunk (samples per no-grad value pass), precision ("fp32"/"bf16":
    the network runs under that autocast; logits and values come out float32).

    Outputs: ``action_dist_inputs`` (B, K, D, H, W) logits; in training also ``embeddings``
    (B, F, D, H, W) backbone features, so PPO's value loss reuses them instead of a second
    backbone pass. ``compute_values`` -> (B,).
    """

    def setup(self):
        obs, act = self.observation_space, self.action_space
        if not isinstance(act, gym.spaces.MultiDiscrete) or len(act.shape) != 3:
            raise ValueError(f"VoxelPPOModule needs a (D, H, W) MultiDiscrete action space, got {act}")
        nvec = np.asarray(act.nvec)
        if not (nvec == nvec.flat[0]).all():
            raise ValueError("every voxel must have the same number of actions")
        if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 4 or tuple(obs.shape[1:]) != tuple(act.shape):
            raise ValueError(f"observation space must be Box(C, D, H, W) matching the action grid {act.shape}, "
                             f"got {obs}")
        cfg = net_config_for(int(obs.shape[0]), int(nvec.flat[0]), **(self.model_config or {}))
        self.net = VoxelPPONet(**cfg)
        self.reduction = str((self.model_config or {}).get("reduction", "mean"))
        if self.reduction not in DISTRIBUTIONS:
            raise ValueError(f"reduction must be one of {sorted(DISTRIBUTIONS)}, got {self.reduction!r}")
        self.value_chunk = int((self.model_config or {}).get("value_chunk", 16))
        self.precision = str((self.model_config or {}).get("precision", "fp32"))
        self.action_dist_cls = DISTRIBUTIONS[self.reduction]

    def _forward(self, batch: dict, **kwargs) -> dict:
        obs = batch[Columns.OBS]
        with autocast(self.precision, obs.device):
            logits, _ = self.net.policy(obs.float())
        return {Columns.ACTION_DIST_INPUTS: logits.float()}

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        obs = batch[Columns.OBS]
        with autocast(self.precision, obs.device):
            logits, feats = self.net.policy(obs.float())
        return {Columns.ACTION_DIST_INPUTS: logits.float(), Columns.EMBEDDINGS: feats}

    def compute_values(self, batch: dict, embeddings: Any = None) -> torch.Tensor:
        if embeddings is not None:  # PPO's loss: features of this forward_train, with grad
            with autocast(self.precision, embeddings.device):
                return self.net.value_from_features(embeddings).float()
        # Without embeddings RLlib wants value estimates only (GAE over the whole train batch
        # in the learner connector): no graph, and chunks so that a few hundred 32^3 samples
        # do not hold every activation of the backbone at once.
        obs = batch[Columns.OBS]
        with torch.no_grad(), autocast(self.precision, obs.device):
            return torch.cat([self.net.value(obs[i:i + self.value_chunk].float())
                              for i in range(0, obs.shape[0], self.value_chunk)]).float()


class SVLCallbacks(RLlibCallback):
    """Episode-end metrics from the env's last info: Dice vs truth and gain over the annotation."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        if metrics_logger is None:
            return
        info = episode.get_infos(-1)
        if not isinstance(info, dict):
            return
        for key in ("dice_clean", "dice", "continuity"):
            if key in info:
                metrics_logger.log_value(key, float(info[key]), reduce="mean")
        if "dice_clean" in info and "dice_annotation_clean" in info:
            metrics_logger.log_value("dice_gain", float(info["dice_clean"]) - float(info["dice_annotation_clean"]),
                                     reduce="mean")
