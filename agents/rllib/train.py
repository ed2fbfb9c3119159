"""PPO on Ray RLlib (new API stack): distributed rollouts of ``SVLDRL-v0`` with a per-voxel policy.

    pip install "svl-drl[rllib]"
    svl-drl train --agent rllib-ppo --num-env-runners 2 --updates 50 --out runs/rllib
    svl-drl train --agent rllib-ppo --num-env-runners 16 --address auto --out runs/rllib   # a running cluster

    from agents.rllib import train_rllib, RLlibPolicy
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
- The RLModule (``agents.rllib.module.VoxelPPOModule``) wraps ``agents.rllib.net.VoxelPPONet``, the same
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

import time
from pathlib import Path

import numpy as np
import torch

from agents.common.checkpoint import check_dir_path, ensure_dir, load_checkpoint, resolve_checkpoint, run_folder
from agents.common.precision import resolve_precision
from agents.common.runlog import MetricsCSV, TensorBoardLog, write_json
from agents.rllib.config import (MODULE_DEFAULTS, PPO_DEFAULTS, build_config, init_ray, require_ray, runner_env,
                                 split_options)
from agents.rllib.net import VoxelPPONet, net_config_for
from agents.rllib.policy import KIND, RLlibPolicy
from svl_env import EnvConfig

DEFAULT_UPDATES = 200


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


def train_rllib(env_kwargs: EnvConfig | dict, *, updates: int | None = None, minutes: float | None = None,
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
    env = runner_env(env_kwargs)
    validate_env(env)  # options and data, before Ray starts or the run folder is touched
    cuda_learner = (str(env.device).startswith("cuda") if num_gpus_per_learner is None
                    else bool(num_gpus_per_learner))
    # auto stays fp32, as for the SB3 PPO (agents/sb3/train.py): the same clipped ratio of
    # patch-reduced log-probabilities, which bf16 broke there
    options["precision"] = resolve_precision(options.get("precision"), "cuda" if cuda_learner else "cpu",
                                             auto_bf16=False)
    start_net, start_iter = None, 0
    if resume is not None:
        ck = load_checkpoint(resolve_checkpoint(resume), KIND)
        start_net = RLlibPolicy.from_checkpoint(ck).net
        start_iter = int(ck["meta"].get("iteration", 0))
        if out is None:
            out = ck["path"].parent
    if out is not None:
        check_dir_path(out, "--out")  # named now; created only once Ray is up (no partial output)
    config = build_config(env, num_env_runners=num_env_runners, num_envs=num_envs, seed=seed,
                          num_gpus_per_learner=num_gpus_per_learner, **options)
    n_ch, n_act = env.num_channels, env.num_actions
    _, model_cfg, _ = split_options(options)
    net_config = net_config_for(n_ch, n_act, **model_cfg)
    if start_net is not None and start_net.config != net_config:
        raise ValueError(f"{resume}: the checkpoint's network {start_net.config} differs from the requested "
                         f"{net_config}")
    n_vox = int(np.prod(env.patch_shape))
    ckpt_config = {"net": net_config, "env": env.to_json(strict=False),
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
    from agents.cli.envargs import check_train_budget_args, env_config

    check_train_budget_args(args, "rllib-ppo scales with --num-env-runners")
    runners = 2 if args.num_env_runners is None else int(args.num_env_runners)
    if runners < 0:
        raise ValueError(f"--num-env-runners must be >= 0, got {runners}")
    out = run_folder(args.out, args.resume)
    env = env_config(args)
    # --device is the LEARNER's device here. RLlib's env runners keep episodes as numpy arrays,
    # so a CUDA env inside a runner would only add a device->host copy per step: the runners
    # step CPU environments and the GPU does the PPO update (the costly part, see README).
    learner_gpus = 1 if env.torch_device.type == "cuda" else 0
    train_rllib(env.replace(device="cpu"), updates=args.updates, minutes=args.minutes, num_env_runners=runners,
                num_envs=args.num_envs, address=args.address, seed=args.seed, out=out, resume=args.resume,
                checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                num_gpus_per_learner=learner_gpus, precision=args.precision)
    return out
