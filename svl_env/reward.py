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

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from . import memory
from . import metrics as M
from .dynamics import as_u8


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
    """Terms of the composite at one state: counts and costs (B,) float64, plus per-voxel
    integer maps reused by the next step: ``face`` (B, D, H, W) uint8, the number of
    foreground face neighbours, and ``vtv`` (B, D, H, W) int8, ``voxel_tv`` of the state."""

    tp: torch.Tensor
    n_pred: torch.Tensor
    n_target: torch.Tensor
    dice: torch.Tensor
    tv: torch.Tensor
    n_cc: torch.Tensor
    face: torch.Tensor
    vtv: torch.Tensor

    def fragmentation(self) -> torch.Tensor:
        return (self.n_cc.double() - 1.0).clamp_min(0.0)

    def index_put(self, idx: torch.Tensor, other: "Objective") -> None:
        """Overwrite rows ``idx`` with ``other``'s (partial resets of a vector env)."""
        for f in fields(self):
            getattr(self, f.name)[idx] = getattr(other, f.name)

    def take(self, idx: torch.Tensor) -> "Objective":
        """Rows ``idx`` (a copy)."""
        return Objective(*(getattr(self, f.name)[idx] for f in fields(self)))


def face_sums(f: torch.Tensor) -> torch.Tensor:
    """Number of foreground face neighbours (6-neighbourhood, patch border = background).

    (B, D, H, W) {0,1} -> same dtype (use uint8 for masks: the counts <= 6 are exact and
    a byte op moves a quarter of float32's bytes). Six shifted adds of a padded copy:
    cheaper than a sparse 3x3x3 convolution on CPU.
    """
    p = F.pad(f, (1, 1, 1, 1, 1, 1))
    out = p[:, :-2, 1:-1, 1:-1] + p[:, 2:, 1:-1, 1:-1]
    out += p[:, 1:-1, :-2, 1:-1]
    out += p[:, 1:-1, 2:, 1:-1]
    out += p[:, 1:-1, 1:-1, :-2]
    out += p[:, 1:-1, 1:-1, 2:]
    return out


_INSIDE: dict = {}


def inside_neighbours(shape: tuple[int, int, int], device, dtype=torch.float32) -> torch.Tensor:
    """(1, D, H, W): how many face neighbours each voxel has inside the patch (cached)."""
    key = (tuple(shape), str(device), dtype)
    if key not in _INSIDE:
        _INSIDE[key] = face_sums(torch.ones(1, *shape, device=device)).to(dtype)
    return _INSIDE[key]


def voxel_tv(f: torch.Tensor, face: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Per voxel, how many of its face pairs differ: ``inside - face`` if foreground else ``face``.

    Σ voxel_tv = 2·TV (each differing pair is seen from both ends)."""
    return f * (inside - 2.0 * face) + face


def _voxel_tv8(m8: torch.Tensor, face8: torch.Tensor) -> torch.Tensor:
    """``voxel_tv`` of a uint8 mask in int8 arithmetic (values 0..6, exact)."""
    inside = inside_neighbours(m8.shape[1:], m8.device, torch.int8)
    face = face8.view(torch.int8)
    return torch.sub(inside, face, alpha=2).mul_(m8.view(torch.int8)).add_(face)


def objective(mask: torch.Tensor, target: torch.Tensor, n_target: torch.Tensor | None = None) -> Objective:
    """Objective terms of ``mask`` (B, D, H, W) {0,1} (float32, uint8 or bool) against
    ``target`` (same shape, {0,1} float32 or uint8).

    ``n_target`` (B,) may pass the (per-episode constant) target size. The counts are taken
    on byte maps; they are integers, so they equal the float32 sums of the float masks.
    """
    m8 = as_u8(mask)
    face = face_sums(m8)
    vtv = _voxel_tv8(m8, face)
    tp, n_p = M.row_sums(m8 & as_u8(target)), M.row_sums(m8)
    n_t = M.row_sums(target) if n_target is None else n_target
    return Objective(tp, n_p, n_t, M.dice_from_counts(tp, n_p, n_t), 0.5 * M.row_sums(vtv),
                     M.n_components(m8.view(torch.bool)), face, vtv)


def continuity_cost(obj: Objective, w: RewardWeights, norm: float) -> torch.Tensor:
    """C(f) of DESIGN.md, (B,) float64."""
    return w.w_cc * obj.fragmentation() + w.w_tv * obj.tv / norm


def _bcast(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 1, 1, 1)


def _composite_map(delta, target, tv_change, rows: dict, w: RewardWeights, norm: float) -> torch.Tensor:
    """The per-voxel reward of the module doc in float32, one fixed sequence of operations.

    ``delta`` = f_t - f_{t-1}, ``target`` g, ``tv_change`` = voxel_tv(f_t) - voxel_tv(f_{t-1})
    (float32, any shape (B, ...)); ``rows``: per-row float32 scalars shaped to broadcast
    against them -- ``n_changed`` (clamped to >= 1), ``coef`` = 2 / (S_{t-1}·S_t), ``s_prev``,
    ``tp_prev``, ``d_dice``, ``d_frag`` -- and ``exact`` (bool: both S > 0).
    """
    delta_abs = delta.abs()
    even = delta_abs / rows["n_changed"]  # each changed voxel's equal share
    dice_map = delta * rows["coef"] * (target * rows["s_prev"] - rows["tp_prev"])
    dice_map = torch.where(rows["exact"], dice_map, even * rows["d_dice"])
    # A face pair whose two ends both flipped keeps its |difference| (binary masks), so each
    # pair's TV change belongs wholly to its one changed end: |δ_i|·(tv_i(new) - tv_i(prev)).
    tv_map = delta_abs * tv_change
    cont_map = w.w_cc * even * rows["d_frag"] + (w.w_tv / norm) * tv_map
    return w.w_dice * dice_map - w.w_cont * cont_map


def _row_terms(prev_obj: Objective, new_obj: Objective, n_changed: torch.Tensor) -> dict:
    """(B,) per-row inputs of ``_composite_map`` (float32, ``exact`` bool)."""
    s_prev = prev_obj.n_pred + prev_obj.n_target
    s_new = new_obj.n_pred + new_obj.n_target
    return {"n_changed": n_changed.clamp_min(1.0).float(),
            "coef": (2.0 / (s_prev * s_new).clamp_min(1e-12)).float(),
            "s_prev": s_prev.float(), "tp_prev": prev_obj.tp.float(),
            "d_dice": (new_obj.dice - prev_obj.dice).float(),
            "d_frag": (new_obj.fragmentation() - prev_obj.fragmentation()).float(),
            "exact": (s_prev > 0) & (s_new > 0)}


# Every voxel's (delta, target, tv_change) is one of 3 x 2 x 13 cases, numbered
# k = 26·(delta + 1) + 13·target + (tv_change + 6).
_N_CASES = 78
_CASES: dict = {}


def _cases(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = str(device)
    if key not in _CASES:
        k = torch.arange(_N_CASES, device=device)
        _CASES[key] = ((k // 26 - 1).float()[None], ((k // 13) % 2).float()[None], (k % 13 - 6).float()[None])
    return _CASES[key]


def step_reward(prev_mask: torch.Tensor, new_mask: torch.Tensor, target: torch.Tensor,
                prev_obj: Objective, w: RewardWeights, *,
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Objective]:
    """Reward of one batched transition.

    Args: masks (B, D, H, W) {0, 1} (float32, uint8 or bool); ``target`` the reward target
    G, same shape, float32 or uint8; ``prev_obj`` the objective at ``prev_mask`` (carried
    over from the previous step); ``out`` an optional float32 buffer for the reward map.
    Returns: reward (B,) float64, reward map (B, D, H, W) float32, objective at ``new_mask``.

    The map is ``_composite_map`` at every voxel. A voxel's value depends only on its row and
    on which of 78 cases (delta, target, TV change) it is in, so the formula is evaluated once
    per row and case -- the same float32 operations on the same operands, hence the same bits
    -- and each voxel looks its value up: byte arithmetic for the case number and one gather,
    instead of ~25 float32 passes over the batch (memory-bound on CPU).
    """
    b, shape = prev_mask.shape[0], tuple(prev_mask.shape[1:])
    norm = M.surface_norm(shape)
    p8, n8 = as_u8(prev_mask), as_u8(new_mask)
    g = as_u8(target)
    new_obj = objective(n8, g, prev_obj.n_target)
    d_dice = new_obj.dice - prev_obj.dice
    d_cont = continuity_cost(new_obj, w, norm) - continuity_cost(prev_obj, w, norm)
    reward = w.w_dice * d_dice - w.w_cont * d_cont
    n_changed = M.row_sums(n8 ^ p8)
    rows = {k: v[:, None] for k, v in _row_terms(prev_obj, new_obj, n_changed).items()}
    table = _composite_map(*_cases(n8.device), rows, w, norm)  # (B, 78)

    # case number in uint8 arithmetic (wraps mod 256; the true value is in [0, 78))
    case = torch.mul(n8, 26).sub_(p8, alpha=26).add_(g, alpha=13).add_(new_obj.vtv.view(torch.uint8))
    case.sub_(prev_obj.vtv.view(torch.uint8)).add_(32)
    index = memory.empty((b, *shape), torch.int32, n8.device).copy_(case)
    index += torch.arange(0, b * _N_CASES, _N_CASES, dtype=torch.int32, device=n8.device).view(-1, 1, 1, 1)
    if out is None:
        out = torch.empty((b, *shape), dtype=torch.float32, device=n8.device)
    torch.index_select(table.reshape(-1), 0, index.view(-1), out=out.view(-1))
    return reward, out, new_obj


def _reference_reward_map(prev_mask: torch.Tensor, new_mask: torch.Tensor, target: torch.Tensor,
                          prev_obj: Objective, new_obj: Objective, w: RewardWeights) -> torch.Tensor:
    """``_composite_map`` evaluated voxel by voxel on full float32 tensors (B, D, H, W): what
    ``step_reward``'s lookup must reproduce bit for bit (tests compare the two)."""
    norm = M.surface_norm(tuple(prev_mask.shape[1:]))
    inside = inside_neighbours(prev_mask.shape[1:], prev_mask.device)
    prev_mask, new_mask, target = prev_mask.float(), new_mask.float(), target.float()
    delta = new_mask - prev_mask
    n_changed = delta.abs().sum((1, 2, 3)).double()
    tv_change = (voxel_tv(new_mask, new_obj.face.float(), inside) - voxel_tv(prev_mask, prev_obj.face.float(), inside))
    rows = {k: _bcast(v) for k, v in _row_terms(prev_obj, new_obj, n_changed).items()}
    return _composite_map(delta, target, tv_change, rows, w, norm)


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
    face = prev_obj.face[:, None].float()
    d_tv = voxel_tv(candidates, face, inside) - voxel_tv(prev_mask[:, None], face, inside)
    return w.w_dice * d_dice - w.w_cont * (w.w_tv / norm) * d_tv
