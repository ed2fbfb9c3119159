"""voxel-PPO: PPO for dense voxel agents, in one file (in the manner of CleanRL's ``ppo.py``).

Every voxel of a patch is an agent; one fully-convolutional ``PolicyValueNet``
(agents.common.networks) shared by all of them gives K action logits and a value per voxel.
Read top to bottom:

1. ``Args`` -- every hyper-parameter, with the defaults that learn (see "what makes it learn").
2. rollout -- ``num_envs`` fresh episodes of ``SVLDRLVectorEnv`` (native batched env, tensors on
   the env's device), rolled to their end (``max_steps`` steps; only the final mask is scored,
   so the episode is cut there and nothing is bootstrapped after it). Actions are sampled per
   voxel; ``info["reward_map"]`` (B, D, H, W), whose voxels sum to the scalar reward, is each
   voxel's reward, times the voxel count N = D·H·W (the map is one voxel's share of a patch-level
   Dice change, ~1e-4: times N a flipped voxel is worth ~2N/(|f|+|G|) ~ 3..25).
3. advantages -- GAE per voxel, ``δ_t = r_t + γ V(s_{t+1}) - V(s_t)``,
   ``A_t = δ_t + γλ A_{t+1}``, with ``V`` the value head's map. With ``baseline="counterfactual"``
   the env's ``info["action_rewards"]`` (what each action would have earned at each voxel) give
   the expected immediate reward under the behaviour policy, ``b_t = Σ_a π_a Q_a``, and
   ``δ_t = r_t - b_t`` (an exact, per-voxel baseline for the immediate reward; the value head
   is still trained). Advantages are then normalised per patch (``norm_adv="patch"``), per
   minibatch (CleanRL's) or not at all.
4. update -- ``update_epochs`` passes over the rollout's T·B patch states in ``num_minibatches``
   minibatches: the PPO-clip objective per voxel (ratio ``π(a|s)/π_old(a|s)`` of each voxel's
   own action, clipped to 1 ± ``clip_coef``), an optionally clipped value loss, an entropy bonus;
   every term averaged over voxels.

Initialisation: the policy head's "keep" logit starts at ``keep_bias``, so the untrained policy
is the identity (it returns the annotation) -- a uniform random editor destroys the mask at once.

Reproducibility: update u resets its envs with seeds drawn from ``(seed, u)`` and samples from
a generator seeded by ``(seed, u)``; an ``updates`` budget on CPU repeats exactly.

Python::

    from agents.voxel_ppo import train
    policy = train(env_kwargs={"patch_size": 32}, seed=0, out="runs/vppo", progress=True, cpu_minutes=5)

Command line: ``svl-drl train --agent voxel-ppo --minutes 5 --out runs/vppo``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from agents.common.budget import Budget, scheduled_lr, update_seed
from agents.common.checkpoint import ensure_dir
from agents.common.distributions import gumbel_sample
from agents.common.init_from import load_network, read_init, record
from agents.common.precision import autocast, resolve_precision
from agents.common.runlog import MetricsCSV, write_json
from agents.va3c.learner import make_env
from agents.va3c.losses import scale_for
from agents.va3c.model import _init_net
from agents.va3c.policy import VA3CPolicy
from svl_env import EnvConfig

KIND = "voxel-ppo"
__all__ = ["Args", "KIND", "VoxelPPOPolicy", "compute_advantages", "ppo_loss", "train", "train_from_args", "load"]


@dataclass
class Args:
    """voxel-PPO's hyper-parameters (``train(**options)`` overrides any of them)."""

    # network: the shared fully-convolutional backbone, keep-biased policy head
    backbone: str = "unet"
    width: int = 8
    depth: int = 3
    convgru: bool = False  # a recurrent policy is not supported by this PPO (states are shuffled)
    keep_bias: float = 2.0
    # rollout
    num_envs: int = 4  # at a few CPU-minutes more, smaller updates beat fewer, larger ones (32^3: 8 -> 0.60, 4 -> 0.65)
    # advantages
    gamma: float = 0.5
    gae_lambda: float = 0.95
    reward_scale: str | float = "voxels"  # "voxels": times D·H·W; or a fixed factor
    baseline: str = "counterfactual"  # "value" (GAE on the value head) or "counterfactual" (action_rewards)
    norm_adv: str = "patch"  # "patch", "batch" (the minibatch, CleanRL's) or "none"
    # optimisation
    lr: float = 3e-2  # high for Adam, yet measured best (1e-3: 0.48, 1e-2: 0.69, 3e-2: 0.76, 1e-1: 0.43 at 16^3)
    anneal_lr: bool = True
    update_epochs: int = 4
    num_minibatches: int = 4
    clip_coef: float = 0.2
    clip_vloss: bool = False
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    # arithmetic of the network's forward passes (agents.common.precision): auto, fp32 or bf16
    precision: str = "auto"

    def __post_init__(self):
        if self.baseline not in ("value", "counterfactual"):
            raise ValueError(f"baseline must be 'value' or 'counterfactual', got {self.baseline!r}")
        if self.norm_adv not in ("patch", "batch", "none"):
            raise ValueError(f"norm_adv must be 'patch', 'batch' or 'none', got {self.norm_adv!r}")
        if self.convgru:
            raise ValueError("voxel-PPO trains feed-forward policies only (convgru=False)")
        for k in ("num_envs", "update_epochs", "num_minibatches", "width", "depth"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)!r}")


class VoxelPPOPolicy(VA3CPolicy):
    """A trained voxel-PPO network as a ``Policy``: the shared network's per-voxel argmax (or
    sample); its checkpoints have the kind ``"voxel-ppo"``."""

    name = "voxel-ppo"
    kind = KIND


def load(path, device="cpu") -> VoxelPPOPolicy:
    """A trained policy from its ``checkpoint.pt`` or run folder."""
    return VoxelPPOPolicy.load(path, device=device)


# ----------------------------------------------------------------------------- advantages
def compute_advantages(rewards: torch.Tensor, values: torch.Tensor, args: Args,
                       expected_rewards: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel GAE over one batch of whole episodes.

    rewards, values (T, B, D, H, W); ``expected_rewards`` (T, B, D, H, W) = Σ_a π_a Q_a for the
    counterfactual baseline. Returns (advantages, returns), both (T, B, D, H, W); returns are the
    value head's targets (``A + V`` with the value baseline, GAE's λ-return either way).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    value_adv = torch.zeros_like(rewards)
    last, last_v = torch.zeros_like(rewards[0]), torch.zeros_like(rewards[0])
    for t in reversed(range(T)):  # over the episode's few steps; every voxel at once
        next_value = values[t + 1] if t + 1 < T else torch.zeros_like(values[0])  # the episode ends at T
        delta_v = rewards[t] + args.gamma * next_value - values[t]
        last_v = delta_v + args.gamma * args.gae_lambda * last_v
        value_adv[t] = last_v
        delta = delta_v if expected_rewards is None else rewards[t] - expected_rewards[t]
        last = delta + args.gamma * args.gae_lambda * last
        adv[t] = last
    return adv, value_adv + values


def _normalise(adv: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, D, H, W) advantages normalised per patch (over its voxels), over all N, or not."""
    if mode == "none":
        return adv
    dims = tuple(range(1, adv.dim())) if mode == "patch" else tuple(range(adv.dim()))
    return (adv - adv.mean(dims, keepdim=True)) / (adv.std(dims, keepdim=True) + 1e-8)


# ----------------------------------------------------------------------------- the loss
def _forward(net, obs, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, value) of the network under ``args.precision``, as float32 whatever the precision:
    log-probabilities, advantages and losses are computed in float32."""
    with autocast(args.precision, obs.device):
        logits, value, _ = net(obs)
    return logits.float(), value.float()


def ppo_loss(net, obs, actions, old_logp, adv, returns, old_values, args: Args) -> tuple[torch.Tensor, dict]:
    """PPO-clip per voxel on a minibatch of N patch states.

    obs (N, C, D, H, W); actions, old_logp, adv, returns, old_values (N, D, H, W).
    Returns (loss, metrics as 0-d tensors, read once per update); every term is a mean over voxels.
    """
    logits, value = _forward(net, obs, args)
    logp_all = logits.log_softmax(1)
    logp = logp_all.gather(1, actions[:, None])[:, 0]
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    adv = _normalise(adv, args.norm_adv)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
    if args.clip_vloss:
        v_clipped = old_values + (value - old_values).clamp(-args.clip_coef, args.clip_coef)
        v_loss = 0.5 * torch.max((value - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((value - returns) ** 2).mean()
    entropy = -(logp_all.exp() * logp_all).sum(1).mean()
    loss = pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # the low-variance estimator CleanRL logs
        clipfrac = ((ratio - 1).abs() > args.clip_coef).float().mean()
    return loss, {"pg_loss": pg_loss.detach(), "v_loss": v_loss.detach(), "entropy": entropy.detach(),
                  "approx_kl": approx_kl, "clipfrac": clipfrac}


# ----------------------------------------------------------------------------- rollout
@torch.no_grad()
def rollout(net, env, args: Args, scale: float, gen: torch.Generator, env_seeds: list[int]) -> dict:
    """``num_envs`` whole episodes with sampled actions -> tensors stacked over steps (T, B, ...)."""
    obs, _ = env.reset(seed=env_seeds)
    buf = {k: [] for k in ("obs", "actions", "logp", "values", "rewards", "expected")}
    episode_reward = torch.zeros(env.num_envs, dtype=torch.float64)
    for _ in range(env.max_steps):
        logits, value = _forward(net, obs, args)
        logp_all = logits.log_softmax(1)
        a = gumbel_sample(logits, gen)
        buf["obs"].append(obs)
        buf["actions"].append(a)
        buf["logp"].append(logp_all.gather(1, a[:, None])[:, 0])
        buf["values"].append(value)
        obs, reward, _, _, info = env.step(a)
        episode_reward += torch.as_tensor(reward, dtype=torch.float64).cpu()
        buf["rewards"].append(info["reward_map"].float() * scale)
        if args.baseline == "counterfactual":
            buf["expected"].append((logp_all.exp() * info["action_rewards"].float()).sum(1) * scale)
    out = {k: torch.stack(v) for k, v in buf.items() if v}
    out["dice"] = float(torch.as_tensor(info["dice_clean"] if "dice_clean" in info else info["dice"]).double().mean())
    out["episode_reward"] = float(episode_reward.mean())  # the scalar rewards' sum, mean over episodes
    return out


# ----------------------------------------------------------------------------- training
METRICS = ("update", "progress", "lr", "seconds", "elapsed", "cpu_elapsed", "dice", "episode_reward", "pg_loss",
           "v_loss", "entropy", "approx_kl", "clipfrac", "grad_norm")


def train(*, env_kwargs: dict, seed: int = 0, out=None, progress: bool = True, updates: int | None = None,
          minutes: float | None = None, cpu_minutes: float | None = None, init_from=None,
          **options) -> VoxelPPOPolicy:
    """Train voxel-PPO on ``SVLDRLVectorEnv(**env_kwargs)`` for the budget (whichever limit ends
    first; none: 200 updates; one update = ``num_envs`` episodes). ``options``: ``Args`` fields.
    ``out``: run folder (``checkpoint.pt``, ``config.json``, ``metrics.csv``) or None.
    ``init_from``: warm start -- the network starts from a ``supervised`` / vA3C / voxel-PPO
    checkpoint (file or run folder) of the same shape (``agents.common.init_from``); Adam starts fresh."""
    unknown = set(options) - {f.name for f in fields(Args)}
    if unknown:
        raise ValueError(f"unknown voxel-PPO option(s) {sorted(unknown)}; valid: {[f.name for f in fields(Args)]}")
    env_config = EnvConfig.from_any(env_kwargs)
    args = Args(**options)
    args.precision = resolve_precision(args.precision, env_config.torch_device)  # "fp32" or "bf16" from here on
    budget = Budget(updates, minutes, cpu_minutes)
    init = read_init(init_from) if init_from is not None else None
    if env_config.action_set != "label" and args.baseline == "counterfactual":
        raise ValueError("baseline='counterfactual' needs action_set='label'; pass baseline='value'")
    # built before the env (the init forks the RNG, so the order changes nothing): a warm start
    # of another network shape is refused (one ValueError line) before anything is allocated
    net = _init_net(asdict(args), env_config.num_channels, env_config.num_actions, seed)
    if init is not None:
        load_network(net, init)
    env = make_env(env_config, args.num_envs, args.baseline == "counterfactual")
    net = net.to(env.device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, eps=args.adam_eps)
    scale = scale_for(args.reward_scale, env.patch_shape)
    config = {"net": net.config, "train": asdict(args), "env": env_config.to_json(), "seed": int(seed),
              "budget": budget.as_dict(), "agent": KIND, "precision": args.precision, "init_from": record(init)}
    log = None
    if out is not None:
        ensure_dir(out, "--out")
        write_json(Path(out) / "config.json", config)
        log = MetricsCSV(Path(out) / "metrics.csv", METRICS)
    bar = tqdm(total=budget.updates if minutes is None and cpu_minutes is None else None, desc="voxel-PPO",
               unit="upd", disable=not progress, dynamic_ncols=True)
    u, elapsed, cpu_elapsed = 0, 0.0, 0.0
    try:
        while budget.progress(u, elapsed, cpu_elapsed) < 1.0:
            t0, c0 = time.perf_counter(), time.process_time()
            frac = budget.progress(u, elapsed, cpu_elapsed)
            lr = scheduled_lr(args.lr, frac, schedule="poly" if args.anneal_lr else "constant", power=1.0)
            for g in opt.param_groups:
                g["lr"] = lr
            gen = torch.Generator(device=env.device)
            gen.manual_seed(update_seed(seed, u))
            net.eval()
            ro = rollout(net, env, args, scale, gen, [update_seed(seed, u, i) for i in range(env.num_envs)])
            adv, returns = compute_advantages(ro["rewards"], ro["values"], args, ro.get("expected"))
            # the rollout's T·B patch states are the PPO samples; voxels stay together in a patch
            flat = {k: v.flatten(0, 1) for k, v in (("obs", ro["obs"]), ("actions", ro["actions"]),
                                                   ("logp", ro["logp"]), ("values", ro["values"]),
                                                   ("adv", adv), ("returns", returns))}
            n = flat["obs"].shape[0]
            mb = max(1, n // args.num_minibatches)
            net.train()
            stats: dict[str, list] = {}
            for _ in range(args.update_epochs):
                order = torch.randperm(n, generator=gen, device=gen.device).to(env.device)
                for start in range(0, n, mb):
                    idx = order[start:start + mb]
                    loss, m = ppo_loss(net, flat["obs"][idx], flat["actions"][idx], flat["logp"][idx],
                                       flat["adv"][idx], flat["returns"][idx], flat["values"][idx], args)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    m["grad_norm"] = torch.nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm)
                    opt.step()
                    for k, v in m.items():
                        stats.setdefault(k, []).append(v)
            u += 1
            seconds = time.perf_counter() - t0
            elapsed += seconds
            cpu_elapsed += time.process_time() - c0
            row = {"update": u - 1, "progress": frac, "lr": lr, "seconds": seconds, "elapsed": elapsed,
                   "cpu_elapsed": cpu_elapsed, "dice": ro["dice"], "episode_reward": ro["episode_reward"],
                   **{k: float(torch.stack(v).float().mean()) for k, v in stats.items()}}
            if log is not None:
                log(row)
            bar.update(1)
            bar.set_postfix({"dice": f"{ro['dice']:.3f}", "kl": f"{row['approx_kl']:.3f}"}, refresh=False)
    finally:
        bar.close()
        env.close()
        if log is not None:
            log.close()
    policy = VoxelPPOPolicy(net, {k: config[k] for k in ("net", "train", "env")}, device=env.device)
    if out is not None:
        policy.save(Path(out) / "checkpoint.pt")
    return policy


def train_from_args(args) -> Path:
    """``svl-drl train --agent voxel-ppo`` (options: agents/cli/train.py)."""
    from agents.cli.envargs import check_train_budget_args, env_config, validate_env

    check_train_budget_args(args, "voxel-PPO is synchronous and batched")
    if args.resume is not None:
        raise ValueError("--resume applies to vA3C, supervised, PPO/A2C and rllib-ppo; a voxel-PPO run starts afresh")
    env = env_config(args)
    validate_env(env)
    train(env_kwargs=env, seed=args.seed, out=Path(args.out), progress=not args.no_progress, updates=args.updates,
          minutes=args.minutes, num_envs=args.num_envs, precision=args.precision or "auto",
          init_from=getattr(args, "init_from", None))
    return Path(args.out)
