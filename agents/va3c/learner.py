"""One vA3C update (rollouts, losses, optimiser step) and the optimiser's state I/O."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
from gymnasium.vector import AutoresetMode

from agents.common.budget import update_seed
from agents.common.distributions import gumbel_sample, voxel_argmax
from agents.common.precision import autocast
from agents.va3c.config import lr_at, stage_at
from agents.va3c.losses import _augment, a2c_segment_loss, scale_for, supervised_loss
from agents.va3c.model import VA3CModel
from svl_env import EnvConfig, SVLDRLVectorEnv


# --------------------------------------------------------------------------- the learner
def make_env(env: EnvConfig, num_envs: int, action_rewards: bool) -> SVLDRLVectorEnv:
    """The learner's envs: whole episodes (no autoreset) as tensors on the env's device."""
    return SVLDRLVectorEnv(num_envs, config=env.replace(autoreset_mode=AutoresetMode.DISABLED, return_tensors=True,
                                                        action_rewards=action_rewards))


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

    def _forward(self, obs: torch.Tensor, hidden: torch.Tensor | None = None):
        """The model under the run's precision -> (logits, value, hidden), float32 whatever the
        precision: losses, advantages and log-probabilities are computed in float32."""
        with autocast(self.cfg["precision"], self.device):
            logits, value, hidden = self.model(obs, hidden)
        return logits.float(), value.float(), None if hidden is None else hidden.float()

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
                logits, _, hidden = self._forward(obs, hidden)
                a = voxel_argmax(logits, 1) if cfg["warmup_behaviour"] == "greedy" else gumbel_sample(logits, gen)
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
                    logits, _, h = self._forward(x[t], h)
                    step_loss, p = supervised_loss(logits, mk[t], g[t], cfg["sup_dice"], cfg["sup_ce"])
                    loss = loss + step_loss / T
                    parts = {k: parts[k] + p[k] / T for k in parts}
                n_vox += T * B * int(np.prod(env.patch_shape))
            else:
                idx = torch.randperm(T * B, generator=gen, device=gen.device)[:B].to(self.device)
                x, mk, g = (Y.flatten(0, 1)[idx] for Y in (X, M, G))
                if cfg["augment"]:
                    x, mk, g = _augment([x, mk, g], gen)
                logits, _, _ = self._forward(x)
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
                logits, value, hidden = self._forward(obs, hidden)
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
                    _, boot, _ = self._forward(obs, hidden)
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
