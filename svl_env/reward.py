"""The composite reward: Dice gain minus continuity-cost increase, with its per-voxel map.

Scalar, per environment (DESIGN.md)::

    r_t = w_dice·(Dice(f_t, G) - Dice(f_{t-1}, G)) - w_cont·(C(f_t) - C(f_{t-1}))
    C(f) = w_cc·max(N_cc(f) - 1, 0) + w_tv·Σ|∇f| / (D·H·W)^(2/3)

PAPER.md's C is written as a bonus but meant as a penalty; it enters with a minus sign.
The TV term is divided by the patch's face-area scale so weights transfer across sizes.

Per-voxel map (``info["reward_map"]``), exact decomposition: ``reward_map.sum() == reward``
(float32 rounding aside) and only voxels whose state changed receive non-zero reward:

- Dice: with δ_i = f_t,i - f_{t-1},i, TP = |f∩G|, S = |f| + |G|, the identity
  ΔDice = Σ_i δ_i · 2(g_i·S_{t-1} - TP_{t-1}) / (S_t·S_{t-1}) is exact (both S > 0).
  A flip toward the target earns a positive share, a flip away a negative one. When an S is
  0 (empty target and empty mask) ΔDice is spread evenly over the changed voxels.
- TV: each face pair's change is credited to its changed end (for binary masks a pair
  whose two ends both flipped does not change).
- Components: N_cc is global; its change is spread evenly over the changed voxels.

Counterfactual action rewards (``info["action_rewards"]``, label actions): for each
action a and voxel i, the reward the step would have earned had voxel i alone taken a
(every other voxel kept its state f_{t-1}). The Dice and TV parts are exact for that
single change; the component term is left out (a single voxel's effect on N_cc needs a
global relabelling per voxel). It is the per-voxel Q-like signal of all-action / mean
actor-critic learners.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
import torch.nn.functional as F

from . import metrics as M


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the composite reward (dimensionless)."""

    w_dice: float = 1.0
    w_cont: float = 0.05
    w_cc: float = 0.05
    w_tv: float = 1.0

    @classmethod
    def from_any(cls, value) -> "RewardWeights":
        if value is None:
            return cls()
        if isinstance(value, RewardWeights):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(asdict(cls()))
            if unknown:
                raise ValueError(f"unknown reward weight(s) {sorted(unknown)}; valid: {sorted(asdict(cls()))}")
            out = cls(**{k: float(v) for k, v in value.items()})
            for k, v in asdict(out).items():
                if not torch.isfinite(torch.tensor(v)):
                    raise ValueError(f"reward weight {k}={v} is not finite")
            return out
        raise ValueError(f"reward_weights must be a dict or RewardWeights, got {type(value).__name__}")


@dataclass
class Objective:
    """Terms of the composite at one state: counts and costs (B,) float64, plus the per-voxel
    face-neighbour sums of the mask (B, D, H, W) float32, reused by the next step."""

    tp: torch.Tensor
    n_pred: torch.Tensor
    n_target: torch.Tensor
    dice: torch.Tensor
    tv: torch.Tensor
    n_cc: torch.Tensor
    face: torch.Tensor

    def fragmentation(self) -> torch.Tensor:
        return (self.n_cc.double() - 1.0).clamp_min(0.0)

    def index_put(self, idx: torch.Tensor, other: "Objective") -> None:
        """Overwrite rows ``idx`` with ``other``'s (partial resets of a vector env)."""
        for f in ("tp", "n_pred", "n_target", "dice", "tv", "n_cc", "face"):
            getattr(self, f)[idx] = getattr(other, f)


def face_sums(f: torch.Tensor) -> torch.Tensor:
    """Number of foreground face neighbours (6-neighbourhood, patch border = background).

    (B, D, H, W) {0,1} float32 -> same. Six shifted adds of a padded copy: cheaper than a
    sparse 3x3x3 convolution on CPU.
    """
    p = F.pad(f, (1, 1, 1, 1, 1, 1))
    return (p[:, :-2, 1:-1, 1:-1] + p[:, 2:, 1:-1, 1:-1] + p[:, 1:-1, :-2, 1:-1]
            + p[:, 1:-1, 2:, 1:-1] + p[:, 1:-1, 1:-1, :-2] + p[:, 1:-1, 1:-1, 2:])


_INSIDE: dict = {}


def inside_neighbours(shape: tuple[int, int, int], device) -> torch.Tensor:
    """(1, D, H, W): how many face neighbours each voxel has inside the patch (cached)."""
    key = (tuple(shape), str(device))
    if key not in _INSIDE:
        _INSIDE[key] = face_sums(torch.ones(1, *shape, device=device))
    return _INSIDE[key]


def voxel_tv(f: torch.Tensor, face: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Per voxel, how many of its face pairs differ: ``inside - face`` if foreground else ``face``.

    Σ voxel_tv = 2·TV (each differing pair is seen from both ends)."""
    return f * (inside - 2.0 * face) + face


def objective(mask: torch.Tensor, target: torch.Tensor, n_target: torch.Tensor | None = None) -> Objective:
    """Objective terms of ``mask`` (B, D, H, W) {0,1} float32 against ``target``.

    ``n_target`` (B,) may pass the (per-episode constant) target size."""
    flat = mask.reshape(mask.shape[0], -1)
    tp = (flat * target.reshape(mask.shape[0], -1)).sum(1).double()
    n_p = flat.sum(1).double()
    n_t = target.reshape(mask.shape[0], -1).sum(1).double() if n_target is None else n_target
    face = face_sums(mask)
    tv = 0.5 * voxel_tv(mask, face, inside_neighbours(mask.shape[1:], mask.device)).sum((1, 2, 3)).double()
    return Objective(tp, n_p, n_t, M.dice_from_counts(tp, n_p, n_t), tv, M.n_components(mask), face)


def continuity_cost(obj: Objective, w: RewardWeights, norm: float) -> torch.Tensor:
    """C(f) of DESIGN.md, (B,) float64."""
    return w.w_cc * obj.fragmentation() + w.w_tv * obj.tv / norm


def _bcast(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 1, 1, 1)


def step_reward(prev_mask: torch.Tensor, new_mask: torch.Tensor, target: torch.Tensor,
                prev_obj: Objective, w: RewardWeights) -> tuple[torch.Tensor, torch.Tensor, Objective]:
    """Reward of one batched transition.

    Args: masks (B, D, H, W) in {0, 1} float32; ``target`` the reward target G, same shape;
    ``prev_obj`` the objective at ``prev_mask`` (carried over from the previous step).
    Returns: reward (B,) float64, reward map (B, D, H, W) float32, objective at ``new_mask``.
    """
    norm = M.surface_norm(tuple(prev_mask.shape[1:]))
    inside = inside_neighbours(prev_mask.shape[1:], prev_mask.device)
    new_obj = objective(new_mask, target, prev_obj.n_target)
    d_dice = new_obj.dice - prev_obj.dice
    d_cont = continuity_cost(new_obj, w, norm) - continuity_cost(prev_obj, w, norm)
    reward = w.w_dice * d_dice - w.w_cont * d_cont

    delta = new_mask - prev_mask
    delta_abs = delta.abs()
    n_changed = delta_abs.sum((1, 2, 3)).double()
    even = delta_abs / _bcast(n_changed.clamp_min(1.0).float())  # each changed voxel's equal share

    s_prev = prev_obj.n_pred + prev_obj.n_target
    s_new = new_obj.n_pred + new_obj.n_target
    exact = (s_prev > 0) & (s_new > 0)
    coef = (2.0 / (s_prev * s_new).clamp_min(1e-12)).float()
    dice_map = delta * _bcast(coef) * (target * _bcast(s_prev.float()) - _bcast(prev_obj.tp.float()))
    dice_map = torch.where(_bcast(exact), dice_map, even * _bcast(d_dice.float()))

    # A face pair whose two ends both flipped keeps its |difference| (binary masks), so each
    # pair's TV change belongs wholly to its one changed end: |δ_i|·(tv_i(new) - tv_i(prev)).
    tv_map = delta_abs * (voxel_tv(new_mask, new_obj.face, inside) - voxel_tv(prev_mask, prev_obj.face, inside))
    d_frag = (new_obj.fragmentation() - prev_obj.fragmentation()).float()
    cont_map = w.w_cc * even * _bcast(d_frag) + (w.w_tv / norm) * tv_map
    reward_map = w.w_dice * dice_map - w.w_cont * cont_map
    return reward, reward_map, new_obj


def counterfactual_rewards(prev_mask: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor,
                           prev_obj: Objective, w: RewardWeights) -> torch.Tensor:
    """Reward each voxel would earn changing alone to each candidate state.

    Args: prev_mask (B, D, H, W) {0,1} float32; candidates (B, K, D, H, W): the state each of
    the K actions gives each voxel; target (B, D, H, W). Returns (B, K, D, H, W) float32
    (component term excluded, see module doc).
    """
    norm = M.surface_norm(tuple(prev_mask.shape[1:]))
    delta = candidates - prev_mask[:, None]
    g = target[:, None]
    tp = prev_obj.tp.float().view(-1, 1, 1, 1, 1)
    s = (prev_obj.n_pred + prev_obj.n_target).float().view(-1, 1, 1, 1, 1)
    tp1, s1 = tp + g * delta, s + delta
    dice1 = torch.where(s1 > 0, 2.0 * tp1 / s1.clamp_min(1e-12), torch.ones_like(s1))
    d_dice = dice1 - prev_obj.dice.float().view(-1, 1, 1, 1, 1)

    inside = inside_neighbours(prev_mask.shape[1:], prev_mask.device)[:, None]
    face = prev_obj.face[:, None]
    d_tv = voxel_tv(candidates, face, inside) - voxel_tv(prev_mask[:, None], face, inside)
    return w.w_dice * d_dice - w.w_cont * (w.w_tv / norm) * d_tv
