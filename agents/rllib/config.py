"""RLlib's side of ``rllib-ppo``: the ``PPOConfig`` of ``SVLDRL-v0`` with the per-voxel module, the
runners' env, option defaults, and connecting to (or starting) Ray. Ray is imported only
when a config is built or Ray is started."""

from __future__ import annotations

import os

from gymnasium.vector import AutoresetMode

from agents.rllib.net import NET_DEFAULTS
from svl_env import EnvConfig

INSTALL_HINT = 'Ray RLlib is not installed: pip install "svl-drl[rllib]"'
ENV_ID = "SVLDRL-v0"

#: module-only options: the distribution's reduction, samples per no-grad value pass, the network's
#: arithmetic (agents.common.precision; ``train_rllib`` resolves auto for the learner's device)
MODULE_DEFAULTS = dict(reduction="mean", value_chunk=16, precision="fp32")
#: PPO options (``PPOConfig.training``). Defaults as the SB3 baseline for 5-step episodes of 32^3
#: patches on CPUs: PixelRL's gamma 0.95 and per-voxel entropy 0.01, 2 epochs, minibatches of
#: 20 samples (a 3D U-Net's backward at 32^3 costs ~40 MB per sample), clipping only (no KL
#: penalty: its per-voxel mean would be a second trust region on top of the clip).
PPO_DEFAULTS = dict(lr=3e-4, gamma=0.95, lambda_=0.95, clip_param=0.2, entropy_coeff=0.01, vf_loss_coeff=0.5,
                    vf_clip_param=10.0, grad_clip=0.5, num_epochs=2, minibatch_size=20, use_kl_loss=False)


def require_ray():
    """Import and return ``ray``; ``ValueError`` with the install command if the extra is missing
    (the CLI turns it into one line and exit status 2)."""
    try:
        import ray  # noqa: F401
        import ray.rllib  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def runner_env(env_kwargs: EnvConfig | dict) -> EnvConfig:
    """The env RLlib's runners step: numpy outputs, NEXT_STEP autoreset (RLlib's runners convert
    and reset themselves), no rendering. Its ``to_kwargs()`` is the ``env_config`` RLlib hands
    to ``gym.make_vec`` (pickled to every runner)."""
    env = EnvConfig.from_any(env_kwargs)
    if env.return_tensors:
        raise ValueError("RLlib env runners need numpy outputs (return_tensors=False)")
    return env.replace(autoreset_mode=AutoresetMode.NEXT_STEP, render_mode=None)


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


def build_config(env_kwargs: EnvConfig | dict, *, num_env_runners: int = 2, num_envs: int = 4, seed: int = 0,
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
    env = runner_env(env_kwargs)
    max_steps = env.episode_steps
    runners = max(int(num_env_runners), 1)
    if train_batch is None:
        train_batch = runners * int(num_envs) * max_steps  # one episode from every env per iteration
    ppo["minibatch_size"] = min(int(ppo["minibatch_size"]), train_batch)
    cuda = str(env.device).startswith("cuda")
    gpus = (1 if cuda else 0) if num_gpus_per_learner is None else num_gpus_per_learner

    config = (
        PPOConfig()
        .environment(ENV_ID, env_config=env.to_kwargs())
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
