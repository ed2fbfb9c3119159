"""Losses of the staged pipeline and the per-stage loss weights (λ, α, β) with their schedules.

Per stage (PAPER.md; ``L_dice`` = soft Dice loss of the segmentation decoder, dimensionless in
[0, 1]; ``L_value`` and ``L_policy`` per voxel, averaged over voxels and steps)::

    Warmup:      L = L_dice
    Transition:  L = (1 - λ) L_dice + λ L_value
    Full RL:     L = (1 - α - β) L_dice + α L_value + β L_policy

``L_value = 0.5 (R_t - V(s_t))^2`` with the n-step discounted return
``R_t = r_t + γ r_{t+1} + ... + γ^(T-t) V(s_T)`` (0 after the last step of an episode: the
episode is truncated and only its final mask is scored), rewards = the environment's per-voxel
reward map (``info["reward_map"]``, the Dice + continuity composite, summing to the scalar
reward) times the episode's ``(|f_0| + |G|) / 2`` voxels, so that one voxel flipped towards G
earns about +1 whatever the foreground fraction (one voxel's ΔDice is ~2 / (|f| + |G|)).
``L_policy = -log π(a_t|s_t)·A_t - c_H·H(π) + c_Q·(-Σ_a π_a Q_a) + c_O·L_outcome``: the
per-voxel advantage actor-critic term (``A = R - V``, detached) with an entropy bonus; for the
label actions also the exact all-action term of the environment's counterfactual per-action
rewards ``Q`` (``info["action_rewards"]``, a zero-variance policy gradient of the immediate
reward) and the outcome term (``label_refinement.outcome_loss``: the paper's Dice loss on the
mask the agents' action distribution produces, against the reward target).

Schedules (``progress`` = fraction of the stage elapsed, in [0, 1]): λ ramps linearly from 0
to ``lambda_max`` over the Transition stage (the critic enters gradually so the encoder is not
jolted); in Full RL, α = ``alpha`` throughout and β ramps from 0 to ``beta_max`` over the first
``beta_ramp`` of the stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "seg_loss", "nstep_returns", "actor_critic_losses", "LossWeights", "stage_weights"]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   smooth: float = 1.0) -> torch.Tensor:
    """``1 - Dice(sigmoid(logits), target)``, Dice computed over the whole batch (one number).

    logits, target (B, 1, D, H, W) or (B, D, H, W); ``weight`` (same shape, optional): per-voxel
    weights (co-teaching's selected voxels). The batch-level Dice (sums over every voxel of
    every patch) is stable on patches with little or no foreground."""
    p = torch.sigmoid(logits)
    t = target.float()
    if weight is not None:
        p, t = p * weight, t * weight
    inter = (p * t).sum()
    return 1.0 - (2.0 * inter + smooth) / (p.sum() + t.sum() + smooth)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, bce: float = 0.0,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """The segmentation loss of every method: soft Dice (+ ``bce`` x binary cross-entropy)."""
    loss = soft_dice_loss(logits, target, weight)
    if bce > 0:
        ce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
        ce = (ce * weight).sum() / weight.sum().clamp_min(1.0) if weight is not None else ce.mean()
        loss = loss + bce * ce
    return loss


def nstep_returns(rewards: list[torch.Tensor], bootstrap: torch.Tensor, gamma: float) -> list[torch.Tensor]:
    """Discounted n-step returns, backwards: R_t = r_t + γ R_{t+1}, R_T = ``bootstrap``.

    rewards: T tensors (B, D, H, W) (scaled reward maps); bootstrap (B, D, H, W), detached.
    Returns T tensors (B, D, H, W)."""
    R = bootstrap
    out = [None] * len(rewards)
    for t in reversed(range(len(rewards))):
        R = rewards[t] + gamma * R
        out[t] = R
    return out  # type: ignore[return-value]


def actor_critic_losses(logits: list[torch.Tensor], actions: list[torch.Tensor], values: list[torch.Tensor],
                        rewards: list[torch.Tensor], gamma: float, bootstrap: torch.Tensor | None = None,
                        q: list[torch.Tensor] | None = None, entropy_coef: float = 0.01,
                        q_coef: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-voxel A2C over one episode segment of T steps.

    logits: T x (B, K, D, H, W); actions: T x (B, D, H, W) int64; values: T x (B, D, H, W);
    rewards: T x (B, D, H, W); q: optional T x (B, K, D, H, W) counterfactual action rewards
    (same scale as ``rewards``). Returns {"value": L_value, "policy": L_policy, "pg", "entropy",
    "q_term", "adv_abs", "return"} scalars (the last four detached, for reports)."""
    T = len(rewards)
    boot = torch.zeros_like(values[-1]) if bootstrap is None else bootstrap.detach()
    returns = nstep_returns(rewards, boot, gamma)
    vl = pg = ent = qt = 0.0
    adv_abs = ret = 0.0
    for t in range(T):
        logp_all = logits[t].log_softmax(1)
        probs = logp_all.exp()
        adv = returns[t] - values[t]
        vl = vl + 0.5 * adv.pow(2).mean()
        logp = logp_all.gather(1, actions[t][:, None])[:, 0]
        pg = pg - (logp * adv.detach()).mean()
        ent = ent + (-(probs * logp_all).sum(1)).mean()
        if q is not None:
            qt = qt - (probs * q[t]).sum(1).mean()
        adv_abs = adv_abs + adv.detach().abs().mean()
        ret = ret + returns[t].detach().mean()
    vl, pg, ent = vl / T, pg / T, ent / T
    qt = qt / T if q is not None else torch.zeros((), device=values[0].device)
    policy = pg - entropy_coef * ent + q_coef * qt
    return {"value": vl, "policy": policy, "pg": pg.detach(), "entropy": ent.detach(),
            "q_term": qt.detach() if torch.is_tensor(qt) else torch.tensor(qt),
            "adv_abs": (adv_abs / T).detach(), "return": (ret / T).detach()}


@dataclass(frozen=True)
class LossWeights:
    """The paper's stage weights (dimensionless): λ (Transition), α, β (Full RL)."""

    lambda_max: float = 0.3
    alpha: float = 0.1
    beta_max: float = 0.3
    beta_ramp: float = 0.3

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"loss weight {k} must be in [0, 1], got {v!r}")
        if self.alpha + self.beta_max >= 1.0:
            raise ValueError(f"alpha + beta_max must be < 1 (the Dice term keeps 1 - α - β), "
                             f"got {self.alpha} + {self.beta_max}")
        if self.lambda_max >= 1.0:
            raise ValueError(f"lambda_max must be < 1, got {self.lambda_max}")


def stage_weights(stage: str, progress: float, w: LossWeights) -> dict[str, float]:
    """Weights {"dice", "value", "policy"} of the loss terms at ``progress`` in [0, 1] of ``stage``."""
    p = min(max(float(progress), 0.0), 1.0)
    if stage in ("warmup", "refit"):
        return {"dice": 1.0, "value": 0.0, "policy": 0.0}
    if stage == "transition":
        lam = w.lambda_max * p
        return {"dice": 1.0 - lam, "value": lam, "policy": 0.0}
    if stage == "full":
        beta = w.beta_max * (min(p / w.beta_ramp, 1.0) if w.beta_ramp > 0 else 1.0)
        return {"dice": 1.0 - w.alpha - beta, "value": w.alpha, "policy": beta}
    raise ValueError(f"unknown stage {stage!r}")
