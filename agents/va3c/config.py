"""vA3C's options (``DEFAULT_CONFIG``, ``make_config``) and the stage and learning-rate
schedule over the budget."""

from __future__ import annotations

from typing import Any

from agents.common.budget import scheduled_lr
from agents.common.precision import PRECISIONS


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
    # execution; precision: "auto", "fp32" or "bf16" (agents.common.precision), resolved when a run starts
    "deterministic": True, "threads": None, "precision": "auto",
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
    if cfg["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg['precision']!r}")
    if int(cfg["reward_conv_size"]) % 2 != 1:
        raise ValueError(f"reward_conv_size must be odd, got {cfg['reward_conv_size']!r}")
    return cfg


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


def stage_bounds(cfg: dict) -> dict[str, list[float]]:
    """{stage: [start, end]} fractions of the budget for the enabled stages (what ``stage_at`` uses;
    recorded in a run's config.json)."""
    out, acc = {}, 0.0
    enabled = [s for s in STAGES if cfg[s]]
    for s in enabled:
        end = 1.0 if s == enabled[-1] else min(1.0, acc + {"warmup": cfg["warmup_frac"], "value": cfg["value_frac"]}[s])
        out[s] = [round(acc, 6), round(end, 6)]
        acc = end
    return out


def lr_at(cfg: dict, progress: float) -> float:
    return scheduled_lr(cfg["lr"], progress, schedule=cfg["lr_schedule"], power=cfg["lr_power"],
                        min_frac=cfg["lr_min_frac"])
