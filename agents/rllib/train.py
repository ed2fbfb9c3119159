"""PPO on Ray RLlib (new API stack): distributed rollouts of ``SVLDRL-v0`` with a per-voxel policy.

    pip install "svl-drl[rllib]"
    svl-drl train --agent rllib-ppo --num-env-runners 2 --updates 50 --out runs/rllib
    svl-drl train --agent rllib-ppo --num-env-runners 16 --address auto --out runs/rllib   # a running cluster

    from agents.rllib.train import train_rllib, RLlibPolicy
    policy = train_rllib({"patch_size": 32}, updates=50, num_env_runners=2, out="runs/rllib")
    actions = policy.act(obs)                          # (B, D, H, W) int64, the Policy protocol
    policy = RLlibPolicy.load("runs/rllib")            # no Ray needed to act

How the pieces fit:

- Every env runner (a Ray actor) builds its environments from the gymnasium id:
  ``gym.make_vec("SVLDRL-v0", num_envs, vectorization_mode="vector_entry_point", **env_config)``,
  i.e. ONE native batched ``SVLDRLVectorEnv`` per runner (not ``num_envs`` copies stepped in a
  loop). ``import svl_env`` registers the id; the runners import it when they unpickle the
  RLModule class (``agents.rllib.module`` imports ``svl_env``). The env keeps its default
  ``AutoresetMode.NEXT_STEP``, the mode RLlib's ``SingleAgentEnvRunner`` is written for.
- The RLModule (``agents.rllib.module.VoxelPPOModule``) wraps ``VoxelPPONet`` below, the same
  network layout as the SB3 baseline: the shared 3D backbone (``agents.common.networks``), a per-voxel
  policy head (3x3x3 conv, ReLU, 1x1x1 conv to K logits, "keep" biased) and a pooled value head.
- The action distribution is one batched per-voxel categorical (``VoxelCategorical``);
  log-probabilities and entropies are per-voxel means (see ``agents.rllib.module``).
- One PPO iteration = one episode of ``max_steps`` steps from each of the ``num_envs``
  environments of each env runner (``rollout_fragment_length = max_steps``), then
  ``num_epochs`` passes of minibatch SGD on the learner (the driver process, or a GPU).

Devices: the learner (PPO's update: GAE values + ``num_epochs`` of forward/backward, the
costly part at 32^3) runs in the driver process, on a GPU with ``num_gpus_per_learner=1``
(CLI: ``--device cuda``, which leaves the runners' environments on the CPU: RLlib's episodes
are numpy arrays, so a CUDA env inside a runner would only add a device->host copy per step).
The fully GPU-resident loop is vA3C's synchronous mode (``return_tensors=True``).
On a cluster (``address``) every node needs this project and its dependencies installed
(``pip install "svl-drl[rllib]"``): the runners import ``svl_env`` and ``agents``.

This module imports Ray only to train: ``RLlibPolicy`` (act, save, load) needs torch alone.

Run folder (``out``)::

    config.json       agent, env_kwargs, PPO and network options, seed, Ray address
    checkpoint.pt     the policy network, tensor-only (``agents.common.checkpoint``; loads with
                      ``weights_only=True``, never runs code from the file); rewritten atomically
                      every ``checkpoint_every`` iterations and at the end
    metrics.csv       one row per iteration: losses, entropy, episode return, Dice, throughput
    events.out.tfevents.*   TensorBoard scalars

``resume`` continues from ``checkpoint.pt``'s weights and iteration count; the optimiser's
moments restart (RLlib keeps them in its own pickled checkpoint format, which this project does
not load).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from agents.common.policy import Policy, as_tensor
from agents.common.checkpoint import (check_dir_path, ensure_dir, load_checkpoint, load_state_dict_checked,
                         save_checkpoint)
from agents.common.precision import resolve_precision
from agents.common.runlog import MetricsCSV, TensorBoardLog, jsonable, write_json
from agents.common.networks import PooledValueHead, make_backbone
from agents.va3c.model import _env_dims  # same env dims as vA3C
from agents.va3c.policy import resolve_checkpoint  # same run-folder layout as vA3C

KIND = "rllib-ppo"
INSTALL_HINT = 'Ray RLlib is not installed: pip install "svl-drl[rllib]"'
ENV_ID = "SVLDRL-v0"

#: network options (``VoxelPPONet``); the SB3 baseline's defaults
NET_DEFAULTS = dict(backbone="unet", width=16, depth=2, keep_bias=4.0)
#: module-only options: the distribution's reduction, samples per no-grad value pass, the network's
#: arithmetic (agents.common.precision; ``train_rllib`` resolves auto for the learner's device)
MODULE_DEFAULTS = dict(reduction="mean", value_chunk=16, precision="fp32")
#: PPO options (``PPOConfig.training``). Defaults as the SB3 baseline for 5-step episodes of 32^3
#: patches on CPUs: PixelRL's gamma 0.95 and per-voxel entropy 0.01, 2 epochs, minibatches of
#: 20 samples (a 3D U-Net's backward at 32^3 costs ~40 MB per sample), clipping only (no KL
#: penalty: its per-voxel mean would be a second trust region on top of the clip).
PPO_DEFAULTS = dict(lr=3e-4, gamma=0.95, lambda_=0.95, clip_param=0.2, entropy_coeff=0.01, vf_loss_coeff=0.5,
                    vf_clip_param=10.0, grad_clip=0.5, num_epochs=2, minibatch_size=20, use_kl_loss=False)
DEFAULT_UPDATES = 200


def require_ray():
    """Import and return ``ray``; ``ValueError`` with the install command if the extra is missing
    (the CLI turns it into one line and exit status 2)."""
    try:
        import ray  # noqa: F401
        import ray.rllib  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"{INSTALL_HINT} ({exc})") from None
    return ray


# --------------------------------------------------------------------------- network
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
        self.policy_head = nn.Sequential(nn.Conv3d(f, f, 3, padding=1), nn.ReLU(inplace=True),
                                         nn.Conv3d(f, int(n_actions), 1))
        nn.init.normal_(self.policy_head[-1].weight, std=1e-2)
        with torch.no_grad():
            # Near "keep" at init (p(keep) ~ 0.95 at 4.0): uniform logits would flip one voxel in
            # four at random per step and wreck the annotation before anything is learnt.
            self.policy_head[-1].bias.zero_()
            self.policy_head[-1].bias[0] = float(keep_bias)
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


# --------------------------------------------------------------------------- policy
class RLlibPolicy(Policy):
    """A PPO policy trained with RLlib, under the project's ``Policy`` protocol.

    ``act(obs (B, C, D, H, W), info, deterministic)`` -> (B, D, H, W) int64 in [0, K):
    the per-voxel argmax when deterministic, else a per-voxel categorical sample.
    ``save(path)`` writes a tensor-only checkpoint (``kind="rllib-ppo"``); ``load(path)``
    accepts the file or its run folder. Needs torch only, not Ray.
    """

    name = "rllib-ppo"

    def __init__(self, net: VoxelPPONet, config: dict | None = None, device="cpu", name: str | None = None):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = dict(config or {})
        self.config.setdefault("net", dict(net.config))
        if name:
            self.name = name

    @torch.no_grad()
    def act(self, obs, info: dict | None = None, deterministic: bool = True) -> np.ndarray:
        x = as_tensor(obs, self.device)
        if x.dim() != 5:
            raise ValueError(f"obs must be (B, C, D, H, W), got shape {tuple(x.shape)}")
        logits, _ = self.net.policy(x)
        if deterministic:
            a = logits.argmax(1)
        else:
            u = torch.rand_like(logits).clamp_(1e-20, 1.0)
            a = (logits.log_softmax(1) - torch.log(-torch.log(u))).argmax(1)
        return a.cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def value(self, obs) -> np.ndarray:
        """Critic estimate per volume, (B,) float32."""
        return self.net.value(as_tensor(obs, self.device)).cpu().numpy()

    def save(self, path, meta: dict | None = None) -> Path:
        return save_checkpoint(path, KIND, self.config, {"model": self.net.state_dict()}, meta)

    @classmethod
    def load(cls, path, device="cpu", name: str | None = None) -> "RLlibPolicy":
        ck = load_checkpoint(resolve_checkpoint(path), KIND)
        return cls.from_checkpoint(ck, device=device, name=name)

    @classmethod
    def from_checkpoint(cls, ck: dict, device="cpu", name: str | None = None) -> "RLlibPolicy":
        """The policy of a loaded checkpoint (``agents.common.checkpoint.load_checkpoint``); its network
        config and weights are validated (keys, shapes, finite values) before anything loads."""
        from svl_env.dynamics import ACTION_SETS
        from svl_env.vector_env import CHANNEL_NAMES

        from agents.common.checkpoint import CheckpointError

        cfg, where = ck["config"], ck.get("path", "rllib-ppo checkpoint")
        net_cfg = cfg.get("net")
        if not isinstance(net_cfg, dict) or "model" not in ck["tensors"]:
            raise CheckpointError(f"{where}: rllib-ppo checkpoint lacks the network config or weights")
        # The config comes from the file: check sizes before they allocate anything.
        width, depth = net_cfg.get("width"), net_cfg.get("depth")
        if not (isinstance(width, int) and 1 <= width <= 512 and isinstance(depth, int) and 0 <= depth <= 6):
            raise CheckpointError(f"{where}: network config {net_cfg} has an implausible width/depth")
        try:
            net = VoxelPPONet(**net_cfg)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise CheckpointError(f"{where}: network config {net_cfg} does not build a network "
                                  f"({type(exc).__name__}: {msg})") from None
        if net.config["in_channels"] != len(CHANNEL_NAMES) or \
                net.config["n_actions"] not in {len(v) for v in ACTION_SETS.values()}:
            raise CheckpointError(f"{where}: network ({net.config['in_channels']} channels, {net.config['n_actions']} "
                                  "actions) does not fit the environment")
        load_state_dict_checked(net, ck["tensors"]["model"], where, "network weights")
        return cls(net, cfg, device=device, name=name)


# --------------------------------------------------------------------------- config
def env_config_for(env_kwargs: dict) -> dict:
    """The ``env_config`` RLlib hands to ``gym.make_vec``: numpy outputs, NEXT_STEP autoreset
    (RLlib's runners convert and reset themselves), JSON-like values (pickled to every runner)."""
    kw = dict(env_kwargs)
    if kw.get("return_tensors"):
        raise ValueError("RLlib env runners need numpy outputs (return_tensors=False)")
    for key in ("return_tensors", "autoreset_mode", "render_mode"):
        kw.pop(key, None)
    if isinstance(kw.get("patch_size"), list):
        kw["patch_size"] = tuple(kw["patch_size"])
    return kw


def split_options(options: dict) -> tuple[dict, dict, int | None]:
    """(PPO options, module model_config, train_batch_size or None) with defaults filled in."""
    ppo, model = dict(PPO_DEFAULTS), {**NET_DEFAULTS, **MODULE_DEFAULTS}
    train_batch = None
    for k, v in options.items():
        if k in PPO_DEFAULTS:
            ppo[k] = v
        elif k in model:
            model[k] = v
        elif k == "train_batch_size":
            train_batch = int(v)
        else:
            raise ValueError(f"unknown rllib-ppo option {k!r}; valid: "
                             f"{sorted({*PPO_DEFAULTS, *model, 'train_batch_size'})}")
    return ppo, model, train_batch


def build_config(env_kwargs: dict, *, num_env_runners: int = 2, num_envs: int = 4, seed: int = 0,
                 num_gpus_per_learner: float | None = None, sample_timeout_s: float = 600.0, **options):
    """A ``PPOConfig`` (RLlib new API stack) for ``SVLDRL-v0`` with the per-voxel module.

    Args:
        env_kwargs: ``SVLDRLVectorEnv`` keyword arguments (the runners' ``env_config``).
        num_env_runners: Ray actors that step environments (0: sample in the driver).
        num_envs: environments per runner, one batched native vector env.
        seed: RLlib's seed (network init, env runner seeds).
        num_gpus_per_learner: GPUs of the learner; default 1 when ``env_kwargs["device"]`` is a
            CUDA device, else 0. With a CUDA env device the runners also get a GPU share each.
        **options: PPO options (``PPO_DEFAULTS``) and module options (``NET_DEFAULTS``,
            ``MODULE_DEFAULTS``); ``train_batch_size`` defaults to one episode per env.
    """
    require_ray()
    from gymnasium import VectorizeMode
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from agents.rllib.module import SVLCallbacks, VoxelPPOModule

    if int(num_env_runners) < 0:
        raise ValueError(f"num_env_runners must be >= 0, got {num_env_runners}")
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    ppo, model, train_batch = split_options(options)
    env_config = env_config_for(env_kwargs)
    max_steps = int(env_config.get("max_steps", env_config.get("max_episode_steps") or 5))
    runners = max(int(num_env_runners), 1)
    if train_batch is None:
        train_batch = runners * int(num_envs) * max_steps  # one episode from every env per iteration
    ppo["minibatch_size"] = min(int(ppo["minibatch_size"]), train_batch)
    cuda = str(env_config.get("device", "cpu")).startswith("cuda")
    gpus = (1 if cuda else 0) if num_gpus_per_learner is None else num_gpus_per_learner

    config = (
        PPOConfig()
        .environment(ENV_ID, env_config=env_config)
        .framework("torch")
        .env_runners(
            num_env_runners=int(num_env_runners),
            num_envs_per_env_runner=int(num_envs),
            # the env's own batched class, not num_envs copies in gymnasium's SyncVectorEnv
            gym_env_vectorize_mode=VectorizeMode.VECTOR_ENTRY_POINT,
            rollout_fragment_length=max_steps,
            num_cpus_per_env_runner=1,
            # a CUDA env needs a GPU inside its runner: share one device among the runners
            num_gpus_per_env_runner=(0.5 / runners) if cuda and num_env_runners else 0,
            # one sample() is a full episode of every env: minutes on a loaded 2-core machine
            sample_timeout_s=float(sample_timeout_s),
        )
        .learners(num_learners=0, num_gpus_per_learner=gpus)
        .training(train_batch_size_per_learner=train_batch, **ppo)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=VoxelPPOModule, model_config=model))
        .callbacks(SVLCallbacks)
        .debugging(seed=int(seed), log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=max(runners * int(num_envs), 1))
    )
    return config


def init_ray(address: str | None = None, num_env_runners: int = 2, *, quiet: bool = True) -> bool:
    """Connect to a cluster (``address``: "auto", "HOST:PORT", "ray://HOST:10001") or start a
    local Ray instance sized for ``num_env_runners`` runners + the driver. Returns True when this
    call started/connected Ray (the caller then shuts it down), False if Ray was already up."""
    ray = require_ray()
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    import logging

    # The runners inherit these: sleeping OpenMP threads (see agents/cli/__init__.py).
    runtime_env = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
    kw = dict(logging_level=logging.ERROR if quiet else logging.INFO, log_to_driver=not quiet,
              runtime_env=runtime_env)
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            cause = exc.__cause__
            if cause is not None and "Authentication" in type(cause).__name__ + str(cause):
                msg += ("; the cluster uses token authentication: put its token on this machine "
                        "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) and set RAY_AUTH_MODE=token")
            raise ValueError(f"cannot connect to Ray at {address!r}: {msg}") from None
    else:
        # Ray's CPUs are a logical count for scheduling: each runner asks for 1 and the driver
        # (learner) for 1, so a local instance gets at least that many even on a 2-core machine
        # (the runners then share the cores with the learner -- see benchmarks/scaling.py).
        n_cpu = max(os.cpu_count() or 1, int(num_env_runners) + 1)
        ray.init(num_cpus=n_cpu, include_dashboard=False, object_store_memory=_object_store_bytes(), **kw)
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens at: ``ray.init`` would retry for minutes."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return  # Ray resolves these itself (a running local cluster, Ray Client)
    host, _, port = address.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise ValueError(f"--address must be 'auto', HOST:PORT or ray://HOST:PORT, got {address!r}") from None
    try:
        socket.create_connection((host.strip("[]"), port_n), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"cannot connect to Ray at {address!r}: nothing answers there ({exc.strerror or exc}); "
                         "is the head node started (ray start --head) and the port open?") from None


def _object_store_bytes() -> int:
    # Ray's default takes 30 % of RAM for the object store (7 GB on a 24 GB machine). A rollout
    # batch is a few MB to a few hundred MB (~1.4 MB per 32^3 env-step) and Ray spills to disk
    # beyond the cap, so 1 GiB suffices locally; SVL_DRL_RAY_OBJECT_STORE (bytes) overrides it.
    override = os.environ.get("SVL_DRL_RAY_OBJECT_STORE")
    if override:
        return int(float(override))
    return 1 << 30


# --------------------------------------------------------------------------- training
METRIC_KEYS = {
    # column: path in RLlib's result dict
    "env_steps": ("num_env_steps_sampled_lifetime",),
    "episode_return_mean": ("env_runners", "episode_return_mean"),
    "dice_clean": ("env_runners", "dice_clean"),
    "dice_gain": ("env_runners", "dice_gain"),
    "dice": ("env_runners", "dice"),
    "total_loss": ("learners", "default_policy", "total_loss"),
    "policy_loss": ("learners", "default_policy", "policy_loss"),
    "vf_loss": ("learners", "default_policy", "vf_loss"),
    "entropy": ("learners", "default_policy", "entropy"),
    "mean_kl_loss": ("learners", "default_policy", "mean_kl_loss"),
    "vf_explained_var": ("learners", "default_policy", "vf_explained_var"),
    "grad_norm": ("learners", "default_policy", "gradients_default_optimizer_global_norm"),
    # driver-side wall time of the iteration's two halves: waiting for all runners' samples,
    # and the learner's update (GAE + epochs)
    "sampling_s": ("timers", "env_runner_sampling_timer"),
    "learner_s": ("timers", "learner_update_timer"),
}
FIELDS = ("iteration", "seconds", "env_steps", "env_steps_per_s", "voxel_steps_per_s", *[
    k for k in METRIC_KEYS if k not in ("env_steps",)])


def _lookup(d: dict, path: tuple):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    if isinstance(d, dict):  # a group of stats, not one number
        return None
    try:
        v = float(d)
    except (TypeError, ValueError):
        return None
    return v


def summarize(result: dict) -> dict:
    """The numbers of one ``Algorithm.train()`` result that ``metrics.csv`` keeps."""
    return {k: _lookup(result, p) for k, p in METRIC_KEYS.items()}


def current_net(algo, net_config: dict) -> VoxelPPONet:
    """The learner's current network as a plain ``VoxelPPONet`` on the CPU."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    weights = algo.learner_group.get_weights()[DEFAULT_MODULE_ID]
    sd = {k[len("net."):]: torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v.detach().cpu()
          for k, v in weights.items() if k.startswith("net.")}
    net = VoxelPPONet(**net_config)
    net.load_state_dict(sd)
    return net


def set_net(algo, net: VoxelPPONet) -> None:
    """Load ``net``'s weights into the learner and broadcast them to every env runner."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    sd = {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()}
    algo.learner_group.set_weights({DEFAULT_MODULE_ID: sd})
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def train_rllib(env_kwargs: dict, *, updates: int | None = None, minutes: float | None = None,
                num_env_runners: int = 2, num_envs: int = 4, address: str | None = None, seed: int = 0,
                out=None, resume=None, checkpoint_every: int | None = 50, progress: bool = True,
                tensorboard: bool = True, on_iteration=None, num_gpus_per_learner: float | None = None,
                **options) -> RLlibPolicy:
    """Train PPO with RLlib on ``SVLDRL-v0``; returns the trained ``RLlibPolicy``.

    Args:
        env_kwargs: ``SVLDRLVectorEnv`` keyword arguments (data, patch_size, noise, device, ...).
        updates: PPO iterations (each: one episode per env per runner, then the SGD epochs).
        minutes: wall-clock budget; stops before an iteration that would overrun it. Neither
            given: ``DEFAULT_UPDATES`` iterations; both: whichever ends first.
        num_env_runners, num_envs: Ray env-runner actors and environments per runner.
        address: an existing Ray cluster ("auto", "HOST:PORT", "ray://..."); None starts a
            local instance (shut down at the end). Ray already initialised: used as it is.
        seed: network init and environment seeds.
        out: run folder (config.json, checkpoint.pt, metrics.csv, TensorBoard) or None.
        resume: a run folder / checkpoint.pt to continue (weights and iteration count).
        checkpoint_every: iterations between rewrites of ``out/checkpoint.pt`` (0/None: end only).
        on_iteration: optional ``callable(row: dict)`` after each iteration (metrics row).
        num_gpus_per_learner: GPUs of the learner (default: 1 if ``env_kwargs["device"]`` is
            CUDA, else 0); see ``build_config``.
        **options: PPO and network options, see ``build_config``.
    """
    require_ray()
    from agents.cli.envargs import validate_env

    if updates is not None and int(updates) < 1:
        raise ValueError(f"updates must be >= 1, got {updates}")
    if minutes is not None and not minutes > 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if updates is None and minutes is None:
        updates = DEFAULT_UPDATES
    env_kwargs = dict(env_kwargs)
    validate_env(env_kwargs)  # options and data, before Ray starts or the run folder is touched
    cuda_learner = (str(env_kwargs.get("device", "cpu")).startswith("cuda") if num_gpus_per_learner is None
                    else bool(num_gpus_per_learner))
    options["precision"] = resolve_precision(options.get("precision"), "cuda" if cuda_learner else "cpu")
    start_net, start_iter = None, 0
    if resume is not None:
        ck = load_checkpoint(resolve_checkpoint(resume), KIND)
        start_net = RLlibPolicy.from_checkpoint(ck).net
        start_iter = int(ck["meta"].get("iteration", 0))
        if out is None:
            out = ck["path"].parent
    if out is not None:
        check_dir_path(out, "--out")  # named now; created only once Ray is up (no partial output)
    config = build_config(env_kwargs, num_env_runners=num_env_runners, num_envs=num_envs, seed=seed,
                          num_gpus_per_learner=num_gpus_per_learner, **options)
    n_ch, n_act = _env_dims(env_kwargs)
    _, model_cfg, _ = split_options(options)
    net_config = net_config_for(n_ch, n_act, **model_cfg)
    if start_net is not None and start_net.config != net_config:
        raise ValueError(f"{resume}: the checkpoint's network {start_net.config} differs from the requested {net_config}")
    patch = env_config_for(env_kwargs).get("patch_size", 32)
    n_vox = int(np.prod(patch if isinstance(patch, tuple) else (patch,) * 3))
    ckpt_config = {"net": net_config, "env": jsonable(env_config_for(env_kwargs)),
                   "module": {k: model_cfg[k] for k in MODULE_DEFAULTS}}
    started = init_ray(address, num_env_runners)
    algo = None
    hooks = []
    try:
        run_dir = ensure_dir(out, "--out") if out is not None else None
        if run_dir is not None:
            ppo_cfg = {k: getattr(config, k, None) for k in PPO_DEFAULTS}
            ppo_cfg["train_batch_size"] = config.train_batch_size_per_learner
            write_json(run_dir / "config.json", {
                "agent": KIND, "precision": options["precision"],
                "env_kwargs": ckpt_config["env"], "seed": seed, "num_env_runners": num_env_runners,
                "num_envs_per_env_runner": num_envs, "address": address, "model": model_cfg, "ppo": ppo_cfg,
                "updates": updates, "minutes": minutes, "resumed_from": str(resume) if resume else None})
        algo = config.build_algo()
        if start_net is not None:
            set_net(algo, start_net)
        if run_dir is not None:
            hooks.append(MetricsCSV(run_dir / "metrics.csv", FIELDS, step_key="iteration", append=resume is not None))
            if tensorboard:
                hooks.append(TensorBoardLog(run_dir, prefix="rllib", step_key="iteration"))
        policy = _train_loop(algo, net_config, ckpt_config, run_dir, updates, minutes, start_iter, n_vox,
                             checkpoint_every, progress, hooks + ([on_iteration] if on_iteration else []))
    finally:
        for h in hooks:
            h.close()
        if algo is not None:
            algo.stop()
        if started:
            import ray

            ray.shutdown()
    return policy


def _train_loop(algo, net_config, ckpt_config, run_dir, updates, minutes, start_iter, n_vox, checkpoint_every,
                progress, hooks) -> RLlibPolicy:
    from tqdm.auto import tqdm

    from agents.common.interrupt import graceful_sigint

    stop = {"flag": False}
    budget = None if minutes is None else 60.0 * float(minutes)
    t0 = time.perf_counter()
    last = 0.0
    it = start_iter
    done = 0
    prev_steps = None
    bar = tqdm(total=updates if updates is not None else round(budget), unit="it" if updates is not None else "s",
               desc="train rllib-ppo", disable=not progress, dynamic_ncols=True)

    def checkpoint(iteration: int, final: bool = False) -> RLlibPolicy:
        pol = RLlibPolicy(current_net(algo, net_config), ckpt_config)
        if run_dir is not None:
            pol.save(run_dir / "checkpoint.pt", meta={"iteration": iteration, "final": final})
        return pol

    with graceful_sigint(lambda: stop.update(flag=True), lambda: stop["flag"]):
        while True:
            elapsed = time.perf_counter() - t0
            if updates is not None and done >= updates:
                break
            # stop before an iteration that would overrun the budget (estimated from the last one)
            if budget is not None and done and elapsed + last > budget:
                break
            if stop["flag"]:
                break
            t_it = time.perf_counter()
            result = algo.train()
            last = time.perf_counter() - t_it
            it += 1
            done += 1
            row = summarize(result)
            steps = row.pop("env_steps")
            d_steps = None if steps is None else steps - (prev_steps or 0.0)
            prev_steps = steps
            row.update(iteration=it, seconds=round(time.perf_counter() - t0, 3), env_steps=steps,
                       env_steps_per_s=None if d_steps is None else d_steps / max(last, 1e-9),
                       voxel_steps_per_s=None if d_steps is None else d_steps * n_vox / max(last, 1e-9))
            for h in hooks:
                h(row)
            bar.update(1 if updates is not None else max(0, min(round(time.perf_counter() - t0), bar.total) - bar.n))
            if row.get("dice_clean") is not None:
                bar.set_postfix({"dice": f"{row['dice_clean']:.3f}"}, refresh=False)
            if checkpoint_every and run_dir is not None and done % int(checkpoint_every) == 0:
                checkpoint(it)
    bar.close()
    policy = checkpoint(it, final=True)
    if stop["flag"]:
        raise KeyboardInterrupt
    return policy


def train_from_args(args) -> Path:
    """``svl-drl train --agent rllib-ppo`` (options: agents/cli/train.py).

    ``--updates`` counts PPO iterations; ``--num-envs`` is per env runner;
    ``--num-env-runners`` Ray actors (default 2); ``--address`` an existing cluster.
    """
    require_ray()  # before anything else: the one-line install hint, exit status 2
    from agents.cli.envargs import check_train_budget_args, env_kwargs as make_env_kwargs

    check_train_budget_args(args, "rllib-ppo scales with --num-env-runners")
    runners = 2 if args.num_env_runners is None else int(args.num_env_runners)
    if runners < 0:
        raise ValueError(f"--num-env-runners must be >= 0, got {runners}")
    if args.resume is not None and not Path(args.resume).exists():
        raise FileNotFoundError(f"run to resume not found: {args.resume}")
    out = Path(args.resume) if args.resume else Path(args.out)
    if out.suffix == ".pt":
        out = out.parent
    kw = make_env_kwargs(args)
    # --device is the LEARNER's device here. RLlib's env runners keep episodes as numpy arrays,
    # so a CUDA env inside a runner would only add a device->host copy per step: the runners
    # step CPU environments and the GPU does the PPO update (the costly part, see README).
    from svl_env.vector_env import _device

    learner_gpus = 1 if _device(kw.get("device", "cpu")).type == "cuda" else 0
    kw["device"] = "cpu"
    train_rllib(kw, updates=args.updates, minutes=args.minutes, num_env_runners=runners,
                num_envs=args.num_envs, address=args.address, seed=args.seed, out=out, resume=args.resume,
                checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                num_gpus_per_learner=learner_gpus, precision=args.precision)
    return out
