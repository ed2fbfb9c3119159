"""vA3C: the voxel-level advantage actor-critic of SVL-DRL (PixelRL's method, in 3D).

Every voxel is an agent; one fully-convolutional ``PolicyValueNet`` (agents.common.networks), shared by
all of them, outputs K action logits and a value per voxel. Training runs the paper's stages on
``SVLDRLVectorEnv`` (label actions by default):

1. **warmup** -- supervised, trunk + policy head: the policy's *outcome* must match the reward
   target G (``env.state_tensors()["target"]``: the truth on the simulated-noise benchmark, the
   given annotation otherwise). With per-action candidate states c_a (``label_candidates``),
   ``p_fg = Σ_a π_a c_a`` is the probability the voxel ends foreground and
   ``P_ok = Σ_a π_a [c_a = g]`` the probability it ends right;
   ``L_sup = w_dice (1 - softDice(p_fg, G)) + w_ce (-log P_ok)``. Several actions can be right
   (keep and set_foreground on a correct foreground voxel): the cross-entropy is on the
   *outcome* (the marginal over right actions), never on one arbitrary action. States come from
   greedy rollouts of the current policy (DAgger-style: the states the deterministic policy
   will meet), each rollout reused for ``warmup_reuse`` gradient steps on random minibatches
   of its states with random flips / axis permutations: collecting a batch of episodes (reset +
   max_steps forward passes and env steps) costs about as much as several gradient steps.
2. **value** -- ``(sup_coef) L_sup + value_coef L_value``: the critic learns returns of the
   warmed-up policy before it drives the policy (the paper's Transition stage).
3. **policy** -- ``sup_coef L_sup + value_coef L_value + policy_coef L_pg + mac_coef L_mac``.

Actor-critic (PixelRL, per voxel, averaged over voxels): rewards ``r_t`` = ``info["reward_map"]``
(its voxels sum to the scalar reward exactly) times ``reward_scale``; returns backwards over a
segment of ``t_max`` steps, ``R = r_t + γ·(w * R_{t+1})``, from ``V(s_T)`` (detached) when the
segment stops mid-episode and from 0 when the episode ends there (a truncated episode has no
future reward: only the final mask is scored). ``w`` is a learnable 3x3x3 convolution
initialised to the identity delta (``reward_conv``), trained by the value loss as in PixelRL,
so a voxel's return includes its neighbours'. ``A = R - V``;
``L_pg = -log π(a_t|s_t)·A.detach() - entropy_coef·H(π)``; ``L_value = 0.5 (R - V)^2``.
With ``action_rewards=True`` the env also returns what each action would have earned at each
voxel (``info["action_rewards"]``, (B, K, D, H, W)); the all-action (mean actor-critic) term
``L_mac = -Σ_a π_a · Q_a`` with ``Q = reward_scale · action_rewards`` is an exact, zero-variance
policy gradient of the immediate reward (no sampled action in it).

Initialisation: the policy head's "keep" logit starts at ``keep_bias`` (2.0), so the untrained
policy is the identity (it returns the annotation) instead of a uniform random editor that
first has to escape its own damage (the failure of a from-scratch PixelRL attempt).

Reward scaling: the per-voxel reward map is tiny (~1e-4: one voxel's share of a patch-level Dice
change), so ``reward_scale="voxels"`` (default) multiplies it by the patch's voxel count
N = D·H·W -- a flipped voxel is then worth ~2N/(|f|+|G|) ~ 3..25 (one over the foreground
fraction) and the returns are O(1..10), in the range where lr 1e-3 and unit-scale losses work.
A float gives a fixed factor instead.

Execution: synchronous batched (``workers=0``, default; CPU or CUDA, reproducible from the seed:
update u resets its envs with seeds drawn from ``(seed, u)`` and samples actions from a
generator seeded by ``(seed, u)``, so no RNG state is carried and a resumed run equals an
uninterrupted one), or asynchronous (``workers=n``): n torch.multiprocessing (spawn) processes
share the model (``share_memory()``) and one Adam whose state tensors live in shared memory
(Hogwild updates), each with its own envs and seed. A worker that fails is reported to the main
process, which stops the others and raises ``RuntimeError`` -- never hangs.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue as _queue
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode

from agents.common.policy import Policy, as_tensor
from agents.common.checkpoint import (CheckpointError, load_checkpoint, load_state_dict_checked, save_checkpoint,
                         validate_state_dict)
from agents.common.budget import Budget, scheduled_lr, update_seed
from agents.common.distributions import gumbel_sample
from agents.common.networks import PolicyValueNet

KIND = "va3c"
STAGES = ("warmup", "value", "policy")

DEFAULT_CONFIG: dict[str, Any] = {
    # network
    "backbone": "unet", "width": 8, "depth": 3, "convgru": False,
    "keep_bias": 2.0,  # initial logit of "keep": start near the identity policy, not a uniform one
    # rollouts
    "num_envs": 8,
    "t_max": None,  # None = the env's max_steps (one segment per episode)
    "gamma": 0.95,
    # optimiser
    "lr": 3e-3, "lr_schedule": "poly", "lr_power": 0.9, "lr_min_frac": 0.05, "max_grad_norm": 5.0,
    "adam_eps": 1e-5,
    # stages (fractions of the budget; a disabled stage takes none, the last enabled stage the rest)
    "warmup": True, "value": True, "policy": True, "warmup_frac": 0.6, "value_frac": 0.1,
    "warmup_reuse": 6, "warmup_behaviour": "greedy", "augment": True,
    # loss weights
    "sup_dice": 1.0, "sup_ce": 1.0, "sup_coef": 1.0, "value_coef": 0.05, "policy_coef": 0.1,
    "entropy_coef": 0.01, "mac_coef": 0.1,
    # reward
    "reward_scale": "voxels", "reward_conv": True, "reward_conv_size": 3,
    "action_rewards": True,
    # execution
    "deterministic": True, "threads": None,
}

_PRIVATE_KEYS = ("_stop_after", "_crash_after", "_crash_mode")  # test hooks


def make_config(**config) -> dict:
    """Defaults overridden by ``config``; unknown keys and bad values raise ValueError."""
    unknown = set(config) - set(DEFAULT_CONFIG) - set(_PRIVATE_KEYS)
    if unknown:
        raise ValueError(f"unknown vA3C option(s) {sorted(unknown)}; valid: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    if cfg["backbone"] not in ("unet", "dilated"):
        raise ValueError(f"backbone must be 'unet' or 'dilated', got {cfg['backbone']!r}")
    for k in ("width", "depth", "num_envs", "warmup_reuse"):
        if int(cfg[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {cfg[k]!r}")
    if cfg["t_max"] is not None and int(cfg["t_max"]) < 1:
        raise ValueError(f"t_max must be >= 1, got {cfg['t_max']!r}")
    if not 0.0 <= float(cfg["gamma"]) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {cfg['gamma']!r}")
    if cfg["lr_schedule"] not in ("poly", "constant", "cosine"):
        raise ValueError(f"lr_schedule must be poly, constant or cosine, got {cfg['lr_schedule']!r}")
    if cfg["warmup_behaviour"] not in ("greedy", "sample"):
        raise ValueError(f"warmup_behaviour must be 'greedy' or 'sample', got {cfg['warmup_behaviour']!r}")
    if not (cfg["warmup"] or cfg["value"] or cfg["policy"]):
        raise ValueError("at least one stage (warmup, value, policy) must be enabled")
    rs = cfg["reward_scale"]
    if not (rs == "voxels" or (isinstance(rs, (int, float)) and not isinstance(rs, bool) and rs > 0)):
        raise ValueError(f"reward_scale must be 'voxels' or a positive number, got {rs!r}")
    if int(cfg["reward_conv_size"]) % 2 != 1:
        raise ValueError(f"reward_conv_size must be odd, got {cfg['reward_conv_size']!r}")
    return cfg


# --------------------------------------------------------------------------- the model
class RewardMapConv(nn.Module):
    """PixelRL's reward-map convolution ``w * R``: one 3D kernel (no bias), identity at init.

    (B, D, H, W) -> (B, D, H, W); zero padding (returns beyond the patch are unknown).
    """

    def __init__(self, size: int = 3):
        super().__init__()
        self.size = int(size)
        w = torch.zeros(1, 1, self.size, self.size, self.size)
        c = self.size // 2
        w[0, 0, c, c, c] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return F.conv3d(r[:, None], self.weight, padding=self.size // 2)[:, 0]


class VA3CModel(nn.Module):
    """The shared per-voxel network plus the reward-map convolution (one optimiser for both)."""

    def __init__(self, net_config: dict, reward_conv: bool = True, reward_conv_size: int = 3):
        super().__init__()
        self.net = PolicyValueNet(**net_config)
        self.reward_conv = RewardMapConv(reward_conv_size) if reward_conv else None

    def forward(self, obs, hidden=None):
        return self.net(obs, hidden)

    def propagate(self, R: torch.Tensor) -> torch.Tensor:
        """``w * R`` (identity without a reward conv)."""
        return R if self.reward_conv is None else self.reward_conv(R)


# --------------------------------------------------------------------------- losses
def label_candidates(mask: torch.Tensor) -> torch.Tensor:
    from svl_env.dynamics import label_candidates as _lc

    return _lc(mask)


def supervised_loss(logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, w_dice: float = 1.0,
                    w_ce: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Warmup loss of the policy's outcome against the reward target.

    logits (N, K, D, H, W); mask (N, D, H, W) {0,1} the state the action applies to; target
    (N, D, H, W) {0,1}. Returns (scalar loss, {"sup_dice", "sup_ce"} floats).
    """
    cand = label_candidates(mask)  # (N, K, D, H, W)
    if cand.shape[1] != logits.shape[1]:
        raise ValueError("the supervised warmup needs the label action set (keep/fg/bg/majority)")
    probs = logits.softmax(1)
    p_fg = (probs * cand).sum(1)
    ok = (cand == target[:, None]).float()
    # log Σ_{a right} π_a, stable: logsumexp over right actions minus logsumexp over all
    log_ok = torch.logsumexp(logits.masked_fill(ok == 0, -1e4), 1) - torch.logsumexp(logits, 1)
    ce = -log_ok.mean()
    dims = tuple(range(1, p_fg.dim()))
    inter = (p_fg * target).sum(dims)
    denom = p_fg.sum(dims) + target.sum(dims)
    soft_dice = (2 * inter + 1.0) / (denom + 1.0)
    dl = (1.0 - soft_dice).mean()
    return w_dice * dl + w_ce * ce, {"sup_dice": float(dl.detach()), "sup_ce": float(ce.detach())}


def a2c_segment_loss(model: VA3CModel, logps, values, rewards, bootstrap, gamma: float):
    """PixelRL's n-step loss over one segment (lists of length T, tensors (B, D, H, W)).

    ``bootstrap``: detached V(s_T) or zeros. Returns (policy loss without the entropy bonus,
    value loss, mean |A|), each averaged over steps and voxels."""
    R = bootstrap
    pg, vl, adv_abs = 0.0, 0.0, 0.0
    T = len(rewards)
    for t in reversed(range(T)):
        R = rewards[t] + gamma * model.propagate(R)
        adv = R - values[t]
        pg = pg - (logps[t] * adv.detach()).mean()
        vl = vl + 0.5 * adv.pow(2).mean()
        adv_abs = adv_abs + adv.detach().abs().mean()  # stays on the device; read once by the caller
    return pg / T, vl / T, float(adv_abs) / T


def scale_for(reward_scale, patch_shape) -> float:
    return float(np.prod(patch_shape)) if reward_scale == "voxels" else float(reward_scale)


# --------------------------------------------------------------------------- augmentation
def _augment(tensors: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """Same random flips and spatial-axis permutation for every tensor (last 3 dims spatial)."""
    r = torch.rand(4, generator=gen, device=gen.device).tolist()
    perm = [int(i) for i in torch.randperm(3, generator=gen, device=gen.device).tolist()]
    out = []
    for x in tensors:
        lead = x.dim() - 3
        flips = [lead + i for i in range(3) if r[i] < 0.5]
        if flips:
            x = x.flip(flips)
        x = x.permute(*range(lead), *[lead + p for p in perm])
        out.append(x.contiguous())
    return out


# --------------------------------------------------------------------------- schedule
def stage_at(cfg: dict, progress: float) -> str:
    """Which stage a fraction ``progress`` in [0, 1] of the budget is in."""
    enabled = [s for s in STAGES if cfg[s]]
    bounds, acc = {}, 0.0
    for s in STAGES:
        if cfg[s]:
            acc += {"warmup": cfg["warmup_frac"], "value": cfg["value_frac"], "policy": 1.0}[s]
        bounds[s] = acc
    for s in enabled:
        if progress < bounds[s]:
            return s
    return enabled[-1]


def lr_at(cfg: dict, progress: float) -> float:
    return scheduled_lr(cfg["lr"], progress, schedule=cfg["lr_schedule"], power=cfg["lr_power"],
                        min_frac=cfg["lr_min_frac"])


# --------------------------------------------------------------------------- the learner
def _jsonable_env_kwargs(env_kwargs: dict) -> dict:
    out = {}
    for k, v in env_kwargs.items():
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, (str, int, float, bool, list, dict)):
            out[k] = v
        else:
            raise ValueError(f"env option {k}={type(v).__name__} cannot be stored in a checkpoint config; "
                             "pass plain values (data folder path, noise spec string, ...)")
    return out


def make_env(env_kwargs: dict, num_envs: int, action_rewards: bool):
    from svl_env import SVLDRLVectorEnv

    kw = {k: v for k, v in env_kwargs.items() if k not in ("autoreset_mode", "return_tensors", "action_rewards")}
    if isinstance(kw.get("patch_size"), list):
        kw["patch_size"] = tuple(kw["patch_size"])
    return SVLDRLVectorEnv(num_envs, autoreset_mode=AutoresetMode.DISABLED, return_tensors=True,
                           action_rewards=action_rewards, **kw)


def activation_floats_per_voxel(net: nn.Module, in_channels: int) -> float:
    """Floats that one forward pass produces per input voxel, summed over every leaf module's
    output (what autograd keeps for the backward pass, to first order). Measured once with
    forward hooks on a small input (downsampling levels count at their resolution)."""
    depth = int(getattr(net, "config", {}).get("depth", 3))
    s = max(8, 2 ** (depth + 1))
    total = [0]

    def hook(_m, _i, out):
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(o):
                total[0] += o.numel()

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = net.training
    try:
        net.eval()  # no normalisation statistics may change
        with torch.no_grad():
            dev = next(net.parameters()).device
            net(torch.zeros(1, in_channels, s, s, s, device=dev))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return total[0] / float(s ** 3)


#: Multiplier from counted activations to the peak memory of a training step. Calibrated with
#: peak RSS on CPU (unet width 8 depth 3, actor-critic updates of 4 x 32^3 and 2 x 48^3 patches:
#: measured / estimated = 0.98 and 1.01; warmup-only 8 x 48^3: 1.08). On an H100 (4 x 32^3, all
#: three stages) ``torch.cuda.max_memory_allocated`` was 384 MiB for a ~460 MiB estimate.
ACTIVATION_FACTOR = 1.0


def _patch_and_steps(env_kwargs: dict) -> tuple[tuple[int, int, int], int]:
    from svl_env.vector_env import _patch_shape

    ps = env_kwargs.get("patch_size", 32)
    return _patch_shape(tuple(ps) if isinstance(ps, list) else ps), int(env_kwargs.get("max_steps") or 5)


def estimate_training_bytes(cfg: dict, env_kwargs: dict, net: nn.Module | None = None, workers: int = 0) -> int:
    """Peak memory of vA3C training (bytes): envs + model/Adam + the larger of the actor-critic
    graph (``t_max`` steps of ``num_envs`` patches) and the warmup's stored rollouts + one
    minibatch. ``workers`` > 0: each worker holds all of it (own envs, own graph)."""
    from svl_env import memory

    patch, steps = _patch_and_steps(env_kwargs)
    n_ch, n_act = _env_dims(env_kwargs)
    b = int(cfg["num_envs"])
    vox = float(np.prod(patch))
    t_graph = min(int(cfg["t_max"] or steps), steps)
    if net is None:
        net = PolicyValueNet(**_net_config(cfg, n_ch, n_act))
    act = activation_floats_per_voxel(net, n_ch)
    per_step = ACTIVATION_FACTOR * act + 6 * n_act + 12  # + logits, probs, candidates, losses, maps
    actor_critic = b * t_graph * vox * 4 * per_step if (cfg["value"] or cfg["policy"]) else 0
    warmup = steps * b * vox * 4 * (n_ch + 2) + b * vox * 4 * per_step if cfg["warmup"] else 0
    params = 4 * 4 * sum(p.numel() for p in net.parameters())  # weights, grads, Adam moments
    envs = memory.env_bytes(b, patch, n_act, bool(cfg["action_rewards"]), env_kwargs.get("device", "cpu"))
    one = envs + params + max(actor_critic, warmup)
    return int(one * max(1, int(workers)))


def check_training_memory(cfg: dict, env_kwargs: dict, net: nn.Module | None = None, workers: int = 0) -> None:
    """Refuse a vA3C configuration whose training cannot fit (``svl_env.memory``), before any allocation."""
    from svl_env import memory
    from svl_env.vector_env import _device

    patch, steps = _patch_and_steps(env_kwargs)
    device = _device(env_kwargs.get("device", "cpu"))
    segment = min(int(cfg["t_max"] or steps), steps)
    what = f"vA3C training with {memory.describe_batch(int(cfg['num_envs']), patch)}, {segment}-step segments"
    if workers:
        what += f", {int(workers)} workers"
    hint = "lower num_envs (--num-envs), patch_size (--patch-size), t_max or the network width"
    if workers:
        hint += ", or use fewer workers"
    memory.check(estimate_training_bytes(cfg, env_kwargs, net, workers), what, hint, device)


class Learner:
    """One actor-learner: its own envs, a (possibly shared) model and optimiser.

    ``update(u, progress, gen_seed)`` runs one update: a batch of ``num_envs`` fresh episodes
    rolled to their end (the sync mode's unit of work, seeded by ``gen_seed``).
    """

    def __init__(self, model: VA3CModel, optimizer: torch.optim.Optimizer, env, cfg: dict):
        self.model, self.opt, self.env, self.cfg = model, optimizer, env, cfg
        self.device = env.device
        self.t_max = int(cfg["t_max"] or env.max_steps)
        self.scale = scale_for(cfg["reward_scale"], env.patch_shape)
        self.is_label = env.action_set == "label"
        if cfg["warmup"] and not self.is_label:
            raise ValueError("the supervised warmup needs action_set='label'; pass warmup=False")
        self.use_mac = bool(cfg["action_rewards"]) and self.is_label

    def _set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    def _step(self, loss: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg["max_grad_norm"]))
        self.opt.step()
        return float(gn)

    def update(self, u: int, progress: float, gen_seed: int) -> dict:
        cfg = self.cfg
        stage = stage_at(cfg, progress)
        lr = lr_at(cfg, progress)
        self._set_lr(lr)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(gen_seed)
        env_seeds = [update_seed(gen_seed, i) for i in range(self.env.num_envs)]
        t0 = time.perf_counter()
        if stage == "warmup":
            m = self._warmup(env_seeds, gen)
        else:
            m = self._actor_critic(env_seeds, gen, stage)
        m.update(update=u, stage=stage, lr=lr, progress=progress, seconds=time.perf_counter() - t0)
        # voxel-agent updates: (voxel, state) pairs that entered a gradient step
        m["voxel_updates_per_s"] = m["voxel_updates"] / max(m["seconds"], 1e-9)
        return m

    # -- warmup: greedy rollouts (no grad), then supervised steps on their states
    def _warmup(self, env_seeds, gen) -> dict:
        cfg, env, model = self.cfg, self.env, self.model
        obs, info = env.reset(seed=env_seeds)
        states, masks, targets = [], [], []
        hidden = None
        model.eval()
        with torch.no_grad():
            for t in range(env.max_steps):
                s = env.state_tensors()
                states.append(obs)
                masks.append(s["mask"].clone())
                targets.append(s["target"].clone())
                logits, _, hidden = model(obs, hidden)
                a = logits.argmax(1) if cfg["warmup_behaviour"] == "greedy" else gumbel_sample(logits, gen)
                obs, reward, _, _, info = env.step(a)
        model.train()
        ep = _episode_metrics(info, reward)
        T, B = len(states), env.num_envs
        X, M, G = torch.stack(states), torch.stack(masks), torch.stack(targets)  # (T, B, ...)
        losses, dls, ces, gns = [], [], [], []
        n_vox = 0
        for _ in range(int(cfg["warmup_reuse"])):
            if model.net.gru is not None:
                # recurrent policy: keep the time order, replay the whole episode batch
                x, mk, g = X, M, G
                if cfg["augment"]:
                    x, mk, g = _augment([X, M, G], gen)
                h, loss, parts = None, 0.0, {"sup_dice": 0.0, "sup_ce": 0.0}
                for t in range(T):
                    logits, _, h = model(x[t], h)
                    l, p = supervised_loss(logits, mk[t], g[t], cfg["sup_dice"], cfg["sup_ce"])
                    loss = loss + l / T
                    parts = {k: parts[k] + p[k] / T for k in parts}
                n_vox += T * B * int(np.prod(env.patch_shape))
            else:
                idx = torch.randperm(T * B, generator=gen, device=gen.device)[:B].to(self.device)
                x, mk, g = (Y.flatten(0, 1)[idx] for Y in (X, M, G))
                if cfg["augment"]:
                    x, mk, g = _augment([x, mk, g], gen)
                logits, _, _ = model(x)
                loss, parts = supervised_loss(logits, mk, g, cfg["sup_dice"], cfg["sup_ce"])
                n_vox += B * int(np.prod(env.patch_shape))
            gns.append(self._step(loss))
            losses.append(float(loss.detach()))
            dls.append(parts["sup_dice"])
            ces.append(parts["sup_ce"])
        return {**ep, "loss": float(np.mean(losses)), "sup_dice": float(np.mean(dls)), "sup_ce": float(np.mean(ces)),
                "grad_norm": float(np.mean(gns)), "voxel_updates": n_vox}

    # -- value / policy stages: on-policy segments of t_max steps
    def _actor_critic(self, env_seeds, gen, stage: str) -> dict:
        cfg, env, model = self.cfg, self.env, self.model
        gamma = float(cfg["gamma"])
        obs, info = env.reset(seed=env_seeds)
        hidden = None
        done_steps = 0
        agg: dict[str, list] = {k: [] for k in ("loss", "policy_loss", "value_loss", "entropy", "sup", "mac",
                                                "adv_abs", "value", "grad_norm")}
        n_vox = 0
        reward_sum = 0.0
        while done_steps < env.max_steps:
            T = min(self.t_max, env.max_steps - done_steps)
            logps, ents, vals, rews, sups, macs = [], [], [], [], [], []
            for _ in range(T):
                s = env.state_tensors()
                mask, target = s["mask"], s["target"]
                logits, value, hidden = model(obs, hidden)
                logp_all = logits.log_softmax(1)
                probs = logp_all.exp()
                a = gumbel_sample(logits, gen)
                logps.append(logp_all.gather(1, a[:, None])[:, 0])
                ents.append(-(probs * logp_all).sum(1))
                vals.append(value)
                if cfg["sup_coef"] > 0 and self.is_label:
                    sups.append(supervised_loss(logits, mask, target, cfg["sup_dice"], cfg["sup_ce"])[0])
                obs, reward, _, _, info = env.step(a)
                reward_sum = reward_sum + torch.as_tensor(reward).double().mean()
                rews.append(info["reward_map"].float() * self.scale)
                if self.use_mac and stage == "policy":
                    q = info["action_rewards"].float() * self.scale
                    macs.append(-(probs * q).sum(1).mean())
            done_steps += T
            if done_steps < env.max_steps:
                with torch.no_grad():
                    _, boot, _ = model(obs, hidden)
                hidden = hidden.detach() if hidden is not None else None
            else:
                boot = torch.zeros_like(vals[-1])
            pg, vl, adv_abs = a2c_segment_loss(model, logps, vals, rews, boot.detach(), gamma)
            ent = torch.stack([e.mean() for e in ents]).mean()
            sup = torch.stack(sups).mean() if sups else torch.zeros((), device=self.device)
            mac = torch.stack(macs).mean() if macs else torch.zeros((), device=self.device)
            loss = cfg["sup_coef"] * sup + cfg["value_coef"] * vl
            if stage == "policy":
                loss = loss + cfg["policy_coef"] * (pg - cfg["entropy_coef"] * ent) + cfg["mac_coef"] * mac
            gn = self._step(loss)
            n_vox += T * env.num_envs * int(np.prod(env.patch_shape))
            for k, v in (("loss", loss), ("policy_loss", pg), ("value_loss", vl), ("entropy", ent), ("sup", sup),
                         ("mac", mac), ("adv_abs", adv_abs), ("value", torch.stack([v.mean() for v in vals]).mean()),
                         ("grad_norm", gn)):
                agg[k].append(float(v.detach()) if torch.is_tensor(v) else float(v))
        out = {k: float(np.mean(v)) for k, v in agg.items()}
        out.update(_episode_metrics(info, None))
        out["episode_reward"] = float(reward_sum)
        out["voxel_updates"] = n_vox
        return out


def _episode_metrics(info: dict, reward) -> dict:
    out = {}
    for k in ("dice_clean", "dice_annotation_clean", "dice"):
        if k in info:
            out[k] = float(torch.as_tensor(info[k]).double().mean())
    if reward is not None:
        out["episode_reward_last"] = float(torch.as_tensor(reward).double().mean())
    return out


# --------------------------------------------------------------------------- optimiser state I/O
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimiser state into {"<param index>.<name>": tensor} + JSON-able groups."""
    sd = opt.state_dict()
    flat = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            flat[f"{idx}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return flat, {"param_groups": sd["param_groups"]}


def load_optimizer_tensors(opt: torch.optim.Optimizer, flat: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in flat.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _check_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Adam moments must have their parameter's shape and be finite (torch does not check)."""
    for g in opt.param_groups:
        for p in g["params"]:
            for name, v in opt.state.get(p, {}).items():
                if name in ("exp_avg", "exp_avg_sq") and (tuple(v.shape) != tuple(p.shape)
                                                          or not bool(torch.isfinite(v).all())):
                    raise ValueError(f"Adam {name} has shape {tuple(v.shape)} (parameter {tuple(p.shape)}) "
                                     "or non-finite values")


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Adam:
    # foreach=False: the per-parameter implementation updates every state tensor in place,
    # which the shared-memory (async) optimiser relies on.
    return torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), eps=float(cfg["adam_eps"]), foreach=False)


def share_optimizer(opt: torch.optim.Adam) -> list[dict]:
    """Create every Adam state tensor now and move it to shared memory (A3C's SharedAdam)."""
    shared = []
    for g in opt.param_groups:
        for p in g["params"]:
            st = opt.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            for v in st.values():
                if torch.is_tensor(v):
                    v.share_memory_()
            shared.append(st)
    return shared


# --------------------------------------------------------------------------- the policy
class VA3CPolicy(Policy):
    """A trained vA3C network as a ``Policy``: argmax (deterministic) or sampled action per voxel.

    ``act(obs (B, C, D, H, W), info, deterministic)`` -> (B, D, H, W) int64 numpy. Recurrent
    (ConvGRU) state is kept between calls and cleared by ``reset``.
    """

    name = "va3c"

    def __init__(self, net: PolicyValueNet, config: dict | None = None, device="cpu", name: str | None = None):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = dict(config or {})
        self.hidden = None
        if name:
            self.name = name
        self._gen = None

    @classmethod
    def untrained(cls, env_kwargs: dict | None = None, seed: int = 0, device="cpu", **config) -> "VA3CPolicy":
        """The initial (random-weight) policy of a run with this seed and config."""
        cfg = make_config(**config)
        n_ch, n_act = _env_dims(env_kwargs or {})
        net = _init_net(cfg, n_ch, n_act, seed)
        return cls(net, {"train": cfg, "net": net.config}, device=device, name="va3c-untrained")

    def reset(self, num_envs: int) -> None:
        self.hidden = None

    @torch.no_grad()
    def act(self, obs, info: dict | None = None, deterministic: bool = True) -> np.ndarray:
        x = as_tensor(obs, self.device)
        if x.dim() == 4:
            x = x[None]
        if self.hidden is not None and self.hidden.shape[0] != x.shape[0]:
            self.hidden = None
        logits, _, self.hidden = self.net(x, self.hidden)
        if deterministic:
            a = logits.argmax(1)
        else:
            a = gumbel_sample(logits, None)
        return a.cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def logits_value(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value, _ = self.net(as_tensor(obs, self.device))
        return logits, value

    def save(self, path) -> Path:
        cfg = {"net": self.net.config, "train": self.config.get("train", {}), "env": self.config.get("env", {})}
        return save_checkpoint(path, KIND, cfg, {"model": self.net.state_dict()}, meta={"policy_only": True})

    @classmethod
    def load(cls, path, device="cpu") -> "VA3CPolicy":
        """From a checkpoint file or a run folder (its ``checkpoint.pt``). Refuses other kinds."""
        ck = load_checkpoint(resolve_checkpoint(path), KIND)
        return cls.from_checkpoint(ck, device=device)

    @classmethod
    def from_checkpoint(cls, ck: dict, device="cpu") -> "VA3CPolicy":
        """The policy of a loaded checkpoint (``load_checkpoint``); its network config and weights
        are validated (keys, shapes, finite values) before anything is loaded."""
        cfg, where = ck["config"], ck.get("path", "vA3C checkpoint")
        if not isinstance(cfg.get("net"), dict) or "model" not in ck["tensors"]:
            raise CheckpointError(f"{where}: vA3C checkpoint lacks the network config or weights")
        net = build_net(cfg["net"], where)
        load_state_dict_checked(net, ck["tensors"]["model"], where, "network weights")
        return cls(net, cfg, device=device)


def build_net(net_config: dict, where) -> PolicyValueNet:
    """``PolicyValueNet(**net_config)`` from a checkpoint's config; a config that does not build
    a network (unknown keys, bad values) is a CheckpointError naming the file."""
    from svl_env import ACTION_SETS, CHANNEL_NAMES

    try:
        net = PolicyValueNet(**net_config)
    except Exception as exc:
        raise CheckpointError(f"{where}: network config {net_config} does not build a network "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if net.config["in_channels"] != len(CHANNEL_NAMES):
        raise CheckpointError(f"{where}: network takes {net.config['in_channels']} observation channels, "
                              f"the environment has {len(CHANNEL_NAMES)}")
    if net.config["n_actions"] not in {len(v) for v in ACTION_SETS.values()}:
        raise CheckpointError(f"{where}: network has {net.config['n_actions']} actions, no action set has that many")
    return net


def resolve_checkpoint(path) -> Path:
    """A run folder -> its ``checkpoint.pt``; a file -> itself."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def _env_dims(env_kwargs: dict) -> tuple[int, int]:
    from svl_env import ACTION_SETS, CHANNEL_NAMES

    return len(CHANNEL_NAMES), len(ACTION_SETS[env_kwargs.get("action_set", "label")])


def _init_net(cfg: dict, in_channels: int, n_actions: int, seed: int) -> PolicyValueNet:
    """The network of a run: weights from ``seed`` (global RNG untouched), keep-biased policy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PolicyValueNet(**_net_config(cfg, in_channels, n_actions))
    with torch.no_grad():
        net.policy_head[-1].bias[0] = float(cfg["keep_bias"])  # action 0 is "keep" in both action sets
    return net


def _net_config(cfg: dict, in_channels: int, n_actions: int) -> dict:
    return dict(in_channels=in_channels, n_actions=n_actions, backbone=cfg["backbone"], width=int(cfg["width"]),
                depth=int(cfg["depth"]), convgru=bool(cfg["convgru"]))


# --------------------------------------------------------------------------- training driver
class VA3CRun:
    """A training run: model, optimiser, counters; ``run()`` trains to the budget.

    Sync mode owns one ``Learner``; async mode spawns workers. ``out`` (a folder) gets
    ``checkpoint.pt`` (periodic + final), ``config.json``, ``metrics.csv`` and TensorBoard
    event files. ``hooks`` receive each update's metrics dict (progress bars, writers).
    """

    def __init__(self, env_kwargs: dict, *, budget: Budget, seed: int = 0, workers: int = 0,
                 config: dict | None = None):
        self.cfg = make_config(**(config or {}))
        self.env_kwargs = dict(env_kwargs)
        self.env_json = _jsonable_env_kwargs(self.env_kwargs)
        self.budget = budget
        self.seed = int(seed)
        self.workers = int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers!r}")
        from svl_env.vector_env import _device

        self.device = _device(self.env_kwargs.get("device", "cpu"))
        n_ch, n_act = _env_dims(self.env_kwargs)
        self.model = VA3CModel(_net_config(self.cfg, n_ch, n_act), bool(self.cfg["reward_conv"]),
                               int(self.cfg["reward_conv_size"]))
        self.model.net.load_state_dict(_init_net(self.cfg, n_ch, n_act, self.seed).state_dict())
        check_training_memory(self.cfg, self.env_kwargs, self.model.net, self.workers)  # before any env exists
        self.model.to(self.device)
        self.opt = make_optimizer(self.model, self.cfg)
        self.update = 0  # updates done
        self.elapsed = 0.0  # training seconds done (resumes add to it)
        self.cpu_elapsed = 0.0  # CPU seconds of this process spent training
        self.history: list[dict] = []
        self.stop_requested = False  # set (e.g. by a SIGINT handler) to end the run after the current update
        self.checkpoints_written = 0

    # -- persistence
    def checkpoint_config(self) -> dict:
        train = {k: v for k, v in self.cfg.items() if k not in _PRIVATE_KEYS}  # test hooks never persist
        return {"net": self.model.net.config, "train": train, "env": self.env_json, "seed": self.seed,
                "workers": self.workers, "budget": self.budget.as_dict()}

    def save(self, path) -> Path:
        opt_flat, opt_meta = optimizer_tensors(self.opt)
        tensors = {"model": self.model.net.state_dict(), "optimizer": opt_flat}
        if self.model.reward_conv is not None:
            tensors["reward_conv"] = self.model.reward_conv.state_dict()
        meta = {"update": self.update, "elapsed": self.elapsed, "cpu_elapsed": self.cpu_elapsed, "optimizer": opt_meta}
        out = save_checkpoint(path, KIND, self.checkpoint_config(), tensors, meta)
        self.checkpoints_written += 1
        return out

    @classmethod
    def resume(cls, path, *, updates: int | None = None, minutes: float | None = None,
               cpu_minutes: float | None = None, workers: int | None = None) -> "VA3CRun":
        ck = load_checkpoint(resolve_checkpoint(path), KIND)
        cfg, meta, where = ck["config"], ck["meta"], ck["path"]
        if "train" not in cfg or "update" not in meta or "optimizer" not in ck["tensors"]:
            raise CheckpointError(f"{where}: a policy-only vA3C checkpoint cannot be resumed (no training state)")
        # Validate everything into a fresh run first; the caller gets a run only if all of it fits.
        try:
            b = dict(cfg["budget"])
            if updates is not None or minutes is not None or cpu_minutes is not None:
                b = {"updates": updates, "minutes": minutes, "cpu_minutes": cpu_minutes}
            budget = Budget(**b)
            update, elapsed = int(meta["update"]), float(meta["elapsed"])
            cpu_elapsed = float(meta.get("cpu_elapsed", 0.0))
            if update < 0 or not (math.isfinite(elapsed) and math.isfinite(cpu_elapsed)):
                raise ValueError(f"bad counters update={update}, elapsed={elapsed}")
            env, seed, train = cfg["env"], int(cfg["seed"]), cfg["train"]
            if not isinstance(env, dict) or not isinstance(train, dict):
                raise TypeError("env and train configs must be objects")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: malformed training state in the checkpoint "
                                  f"({type(exc).__name__}: {exc})") from None
        try:
            make_config(**train)
        except ValueError as exc:
            raise CheckpointError(f"{where}: training config is not valid ({exc})") from None
        build_net(cfg.get("net", {}), where)
        run = cls(env, budget=budget, seed=seed, workers=cfg.get("workers", 0) if workers is None else workers,
                  config=train)
        if cfg.get("net") != run.model.net.config:
            raise CheckpointError(f"{where}: network config {cfg.get('net')} disagrees with the one its training "
                                  f"config builds ({run.model.net.config})")
        validate_state_dict(run.model.net, ck["tensors"]["model"], where, "network weights")
        if run.model.reward_conv is not None:
            if "reward_conv" not in ck["tensors"]:
                raise CheckpointError(f"{where}: checkpoint lacks the reward conv weights its config uses")
            validate_state_dict(run.model.reward_conv, ck["tensors"]["reward_conv"], where, "reward conv weights")
        try:
            probe = make_optimizer(run.model, run.cfg)
            load_optimizer_tensors(probe, ck["tensors"]["optimizer"], meta["optimizer"])
            _check_optimizer_state(probe)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{where}: optimizer state does not fit the model "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        run.model.net.load_state_dict(ck["tensors"]["model"])
        if run.model.reward_conv is not None:
            run.model.reward_conv.load_state_dict(ck["tensors"]["reward_conv"])
        load_optimizer_tensors(run.opt, ck["tensors"]["optimizer"], meta["optimizer"])
        run.update, run.elapsed, run.cpu_elapsed = update, elapsed, cpu_elapsed
        return run

    def policy(self) -> VA3CPolicy:
        net = PolicyValueNet(**self.model.net.config)
        net.load_state_dict({k: v.detach().cpu() for k, v in self.model.net.state_dict().items()})
        return VA3CPolicy(net, {"net": net.config, "train": self.cfg, "env": self.env_json}, device=self.device)

    def done(self) -> bool:
        return self.budget.progress(self.update, self.elapsed, self.cpu_elapsed) >= 1.0

    # -- training
    def run(self, hooks: list[Callable[[dict], None]] = (), checkpoint_every: int = 0,
            checkpoint_path: Path | None = None) -> None:
        if self.workers > 0:
            if self.budget.cpu_minutes is not None:
                raise ValueError("a cpu_minutes budget applies to the synchronous mode only; use minutes or updates")
            return self._run_async(hooks, checkpoint_every, checkpoint_path)
        return self._run_sync(hooks, checkpoint_every, checkpoint_path)

    def _run_sync(self, hooks, checkpoint_every, checkpoint_path) -> None:
        cfg = self.cfg
        env = make_env(self.env_kwargs, int(cfg["num_envs"]), bool(cfg["action_rewards"]))
        learner = Learner(self.model, self.opt, env, cfg)
        stop_after = cfg.get("_stop_after")
        with _torch_settings(self.device, cfg):
            try:
                while not self.done() and not self.stop_requested:
                    t0, c0 = time.perf_counter(), time.process_time()
                    p = self.budget.progress(self.update, self.elapsed, self.cpu_elapsed)
                    m = learner.update(self.update, p, update_seed(self.seed, self.update))
                    self.update += 1
                    self.elapsed += time.perf_counter() - t0
                    self.cpu_elapsed += time.process_time() - c0
                    m["elapsed"], m["cpu_elapsed"] = self.elapsed, self.cpu_elapsed
                    self.history.append(m)
                    for h in hooks:
                        h(m)
                    if checkpoint_path is not None and checkpoint_every and self.update % checkpoint_every == 0:
                        self.save(checkpoint_path)
                    if stop_after is not None and self.update >= int(stop_after):
                        break  # test hook: an interruption right after this update
            finally:
                env.close()

    def _run_async(self, hooks, checkpoint_every, checkpoint_path) -> None:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.model.share_memory()
        shared_state = share_optimizer(self.opt)
        counter = ctx.Value("l", self.update)
        stop = ctx.Event()
        q = ctx.Queue()
        threads = self.cfg["threads"] or max(1, (os.cpu_count() or 2) // self.workers)
        deadline, budget_s = None, None
        if self.budget.minutes is not None:
            budget_s = 60.0 * float(self.budget.minutes)
            deadline = time.time() + budget_s - self.elapsed
        procs = []
        t_start = time.perf_counter()
        elapsed0 = self.elapsed
        for w in range(self.workers):
            p = ctx.Process(target=_async_worker, name=f"va3c-worker-{w}",
                            args=(w, self.model, shared_state, self.cfg, self.env_kwargs, self.seed,
                                  self.budget.updates, deadline, budget_s, elapsed0, counter, stop, q, int(threads)),
                            daemon=True)
            p.start()
            procs.append(p)
        error = None
        update0 = self.update
        completed = 0
        last_ckpt = self.update
        def on_metrics(msg) -> None:
            nonlocal completed
            m = msg[2]
            completed += 1
            self.update = update0 + completed  # updates finished (they may finish out of order)
            self.elapsed = elapsed0 + time.perf_counter() - t_start
            m["elapsed"], m["worker"] = self.elapsed, msg[1]
            self.history.append(m)
            for h in hooks:
                h(m)

        try:
            while not self.stop_requested:
                try:
                    msg = q.get(timeout=0.5)
                except _queue.Empty:
                    msg = None
                if msg is not None:
                    kind = msg[0]
                    if kind == "metrics":
                        on_metrics(msg)
                        if (checkpoint_path is not None and checkpoint_every
                                and self.update - last_ckpt >= checkpoint_every):
                            self.save(checkpoint_path)
                            last_ckpt = self.update
                    elif kind == "error":
                        error = f"vA3C worker {msg[1]} failed: {msg[2]}"
                        break
                    continue
                dead = [p for p in procs if not p.is_alive()]
                bad = [p for p in dead if p.exitcode not in (0, None)]
                if bad:
                    # drain a last error message, if the worker managed to send one
                    try:
                        while True:
                            m2 = q.get(timeout=0.2)
                            if m2[0] == "error":
                                error = f"vA3C worker {m2[1]} failed: {m2[2]}"
                                break
                    except _queue.Empty:
                        pass
                    if error is None:
                        error = f"vA3C worker {bad[0].name} died with exit code {bad[0].exitcode}"
                    break
                if len(dead) == len(procs):
                    break
        finally:
            stop.set()
            if error is None:  # normal end: let workers finish their update and exit cleanly
                for p in procs:
                    p.join(timeout=60)
            for p in procs:  # failure (or a worker stuck): stop the rest now, never hang
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
            if error is None:  # updates the workers finished while stopping count too
                try:
                    while True:
                        msg = q.get_nowait()
                        if msg[0] == "metrics":
                            on_metrics(msg)
                except (_queue.Empty, OSError, EOFError, ValueError):
                    pass
            self.elapsed = elapsed0 + time.perf_counter() - t_start
        if error is not None:
            raise RuntimeError(error)


def _async_worker(wid, model, shared_state, cfg, env_kwargs, seed, total_updates, deadline, budget_s, elapsed0,
                  counter, stop, q, threads):
    """One A3C actor-learner process: own envs and seed, shared model and Adam state (Hogwild)."""
    try:
        # Ctrl-C reaches the whole process group: the main process stops the workers (stop event)
        # after their current update; a worker must not die half-way through a Hogwild step.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(threads)
        opt = make_optimizer(model, cfg)
        params = [p for g in opt.param_groups for p in g["params"]]
        for p, st in zip(params, shared_state):
            opt.state[p] = st
        env = make_env(env_kwargs, int(cfg["num_envs"]), bool(cfg["action_rewards"]))
        learner = Learner(model, opt, env, cfg)
        budget = Budget(total_updates, None) if total_updates is not None else None
        t_start = time.time()
        local = 0
        while not stop.is_set():
            with counter.get_lock():
                u = counter.value
                if budget is not None and u >= total_updates:
                    break
                counter.value += 1  # claim update u (its index sets the stage and lr)
            p = 0.0
            if budget is not None:
                p = u / float(total_updates)
            if deadline is not None:
                now = time.time()
                if now >= deadline:
                    break
                p = max(p, (elapsed0 + now - t_start) / budget_s)
            if cfg.get("_crash_after") is not None and wid == 0 and local >= int(cfg["_crash_after"]):
                if cfg.get("_crash_mode") == "exit":
                    os._exit(3)
                raise RuntimeError("injected crash (test hook _crash_after)")
            m = learner.update(u, p, update_seed(seed, 1 + wid, local))
            local += 1
            q.put(("metrics", wid, m))
        env.close()
    except BaseException as exc:  # report everything, then exit non-zero
        tb = traceback.format_exc().strip().splitlines()
        q.put(("error", wid, f"{type(exc).__name__}: {exc} ({tb[-3].strip() if len(tb) >= 3 else ''})"))
        q.close()
        q.join_thread()
        os._exit(1)


@contextlib.contextmanager
def _torch_settings(device: torch.device, cfg: dict):
    """Threads and determinism for the duration of a sync run; restored afterwards.

    CPU: deterministic algorithms whenever ``deterministic`` (the default). CUDA: only when the
    user also opted in with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS needs it set before it
    starts; deterministic kernels can be slower) -- then sync training is bitwise reproducible on
    the GPU too (checked on an H100); without it CUDA runs drift apart in the last bits."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    try:
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        cuda_opt_in = device.type == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
        if cfg["deterministic"] and (device.type == "cpu" or cuda_opt_in):
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


# --------------------------------------------------------------------------- library entry point
def train_va3c(env_kwargs: dict, *, minutes: float | None = None, updates: int | None = None, seed: int = 0,
               workers: int = 0, out: str | Path | None = None, progress: bool = True, **config) -> VA3CPolicy:
    """Train vA3C on ``SVLDRLVectorEnv(**env_kwargs)`` and return the trained policy.

    Budget: ``updates`` (one update = ``num_envs`` fresh episodes) and/or ``minutes`` (wall
    clock; whichever ends first); neither -> 200 updates. ``workers`` > 0: asynchronous mode.
    ``out``: run folder (``checkpoint.pt``, ``config.json``, ``metrics.csv``, TensorBoard
    events); ``None`` writes nothing. Extra keywords: ``DEFAULT_CONFIG`` options, plus run
    options ``resume`` (a run folder / checkpoint to continue; its config wins),
    ``checkpoint_every`` (updates, default 50) and ``tensorboard`` (default True).
    """
    from agents.va3c.train import run_training

    return run_training(env_kwargs, minutes=minutes, updates=updates, seed=seed, workers=workers, out=out,
                        progress=progress, **config)[0]
