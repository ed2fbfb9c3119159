"""What every staged-pipeline method shares: the training options, the budget clock, the result,
the per-update recorder, the weight average, the learning-rate schedule and the predictions on
the training images.

Budget (``agents.common.budget.Budget``): ``updates``, wall ``minutes`` or ``cpu_minutes`` of this
process (``time.process_time``: all threads; a budget other programs on the machine do not
shrink). The clock counts training work only -- gradient updates and label refinement -- and
is paused while reports (agreement with the given labels) are computed, for every method alike.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.common.budget import Budget, scheduled_lr
from agents.common.windows import as_triple
from agents.staged.data import TrainingSet
from agents.staged.losses import LossWeights
from agents.staged.model import StagedNet
from agents.staged.segment import predict_probability

__all__ = ["DEFAULT_TRAIN", "make_train_config", "patch_shape", "Clock", "TrainResult", "Recorder", "WeightEMA",
           "lr_at", "dice_np", "predict_training", "optimiser_step", "progress_bar"]

DEFAULT_TRAIN: dict = {
    # data / optimisation (every method). run_pipeline replaces patch, batch and window by the
    # values derived from the dataset's fingerprint unless the user gave them (agents.staged.fingerprint);
    # on volumes of 32+ voxels per side those are these defaults. patch / window: one int or three (per axis).
    "patch": 32, "batch": 4, "lr": 3e-3, "lr_power": 0.9, "lr_min_frac": 0.05, "bce": 1.0, "max_grad_norm": 5.0,
    # window: the sliding-window size of every prediction (training-image agreement, label
    # refinement, test-time segmentation); 0 = the training patch. GroupNorm normalises over the
    # window it sees, so a window larger than the (foreground-biased) training patches shifts
    # its statistics: on phantoms with every label noisy, 300 updates of `noisy`, the same
    # model scored 0.523 test Dice with 64^3 windows and 0.650 with 32^3 (README "Staged pipeline").
    "window": 0, "augment": False, "ema": 0.99,
    # stage schedule (svl-drl)
    # (phantoms, 4 CPU-min, 16 test cases, seeds 0-1: Warmup 0.5 with 2 rounds gave 0.692 test
    # Dice in one run, 0.3 with 3 rounds and accept_z 1.0 gave 0.735 on average, 0.15 gave 0.742;
    # with agent_encoder_grad off, 0.777 over seeds 0-3 on 64 test cases; README "Staged pipeline")
    "warmup_frac": 0.30, "transition_frac": 0.10, "rounds": 3,
    # refit_frac: a last stage (svl-drl, self-training) of plain segmentation training (the Warmup
    # loss) on the last round's labels, which is then made at the end of Full RL; 0 = none.
    # refit_reinit: Refit starts from fresh weights with its own learning-rate schedule (the
    # labels are all it keeps of the earlier stages). Off by default; measured on the realistic
    # preset at 10 CPU-min, seeds 0-3 (README "Realistic phantoms"; benchmark row "svl-drl
    # (refit)": refit 0.4 + reinit, accept agents, 1 round, Warmup 0.15, no intensity agents):
    # labels 0.769 (given 0.7225), test Dice IQM 0.677, level with self-training on the same
    # schedule (0.678), noisy 0.667
    "refit_frac": 0.0, "refit_reinit": False,
    # crossfit_frac: a first stage (svl-drl, self-training) that trains crossfit_folds
    # segmentation networks, each on the cases outside one fold, and gives every case an
    # out-of-fold probability: the label agents' consensus input and the acceptance rules'
    # reference instead of the segmentation decoder, which learns the given labels' noise
    # (agents.staged.crossfit); 0 = none. Off by default: measured on the realistic preset only
    # (README "Realistic phantoms", row "svl-drl (cross-fit)", whose schedule is CROSSFIT in
    # benchmarks/staged_pipeline.py)
    "crossfit_frac": 0.0, "crossfit_folds": 2,
    # agent_consensus: what the label agents read as their consensus state (seg_prob,
    # consensus_gap) and the acceptance rules judge against. "model": the segmentation
    # decoder's probability, or the cross-fit stage's out-of-fold one when crossfit_frac > 0.
    # "none": a constant 0.5 everywhere, so the agents judge a label from the image and the
    # label alone, and no budget goes to a cross-fit stage (the agents trained with the
    # out-of-fold consensus hardly read it when they refine). "model" by default: on the
    # realistic preset (seeds 0 / 1, README "Schedule probes") "none" with the cross-fit
    # stage's budget given to Refit made labels 0.816 / 0.799 and test Dice 0.693 / 0.679,
    # against 0.826 / 0.821 and 0.705 / 0.693 with the cross-fit consensus
    "agent_consensus": "model",
    # loss weights (svl-drl)
    "lambda_max": 0.3, "alpha": 0.1, "beta_max": 0.3, "beta_ramp": 0.3,
    # label agents (svl-drl)
    "agent_envs": 4, "agent_steps": 2, "agent_noise": "mt", "agent_noise_ratio": 1.0, "gamma": 0.95,
    "entropy_coef": 0.01, "q_coef": 1.0, "outcome_coef": 1.0, "agent_lr_mult": 10.0, "refine_confidence": 0.0,
    # agent_encoder_grad: whether the label agents' value / policy losses also train the shared
    # encoder. Off: the encoder learns from the segmentation loss (and the intensity agents);
    # on phantoms at 4 CPU-min, routing the label agents' RL gradients into it cost 0.027 test
    # Dice (0.750 vs 0.777 over seeds 0-3, 64 test cases; README "Staged pipeline").
    "agent_encoder_grad": False,
    # acceptance of the agents' proposals after each round (label_refinement.accept_proposals;
    # none of the first three compares cases, so none needs clean ones): "average" (the mean of the
    # agents' and the decoder's foreground probabilities > 0.5), "agents" (the agents' probability
    # alone > 0.5), "consensus" (an edit stands where
    # the decoder agrees), "zscore" (a case's edit must stand out from the other cases'; the
    # previous default, which assumes that most cases are clean) or "all"; accept_z: zscore's
    # threshold. Measured (README "Realistic phantoms"): refined labels vs truth average 0.754 /
    # consensus 0.723 / zscore 0.724 (given 0.723; every label noisy; seeds 0-3) and 0.899 /
    # 0.877 / 0.887 (given 0.879; half noisy; seeds 0-1); test Dice 0.600 / 0.610 / 0.611 and
    # 0.806 / 0.815 / 0.811: average is the one rule whose agents clean the labels, for ~0.01 Dice
    "accept": "average", "accept_z": 1.0,
    # refine_flips: each refinement round's candidates (the agents' proposals; self-training's
    # predictions) are means over 1, 2, 4 or 8 flipped copies of the volumes
    # (agents.common.windows.flip_mean); each copy costs one more pass, inside the budget. 1 by
    # default; the realistic benchmark's cross-fit rows use 4 (both rows, so the control stays
    # matched; measured in README "Flip-averaged refinement")
    "refine_flips": 1,
    "refine_from": "given", "agent_target": "given",
    # agent_reward: "dice" (the environment's composite reward) or "balanced" (its Dice term
    # replaced by a voxel term that weighs found foreground and removed false positives alike;
    # label_refinement.LabelAgentEpisodes). "dice" by default: on the realistic preset "balanced"
    # made the labels larger and the test Dice lower (README "Probes that did not close the gap")
    "reward_weights": None, "agent_reward": "dice",
    # intensity agents (svl-drl; the paper's action set): every n-th Full-RL update; 0 = off
    "intensity_every": 4, "intensity_steps": 2,
    # co-teaching
    "forget_rate": 0.2, "forget_ramp": 0.3,
}


#: the ``agent_consensus`` values (DEFAULT_TRAIN)
AGENT_CONSENSUS = ("model", "none")


def make_train_config(**overrides) -> dict:
    """``DEFAULT_TRAIN`` with ``overrides``; unknown keys / bad values raise ValueError."""
    unknown = set(overrides) - set(DEFAULT_TRAIN)
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}; valid: {sorted(DEFAULT_TRAIN)}")
    cfg = {**DEFAULT_TRAIN, **overrides}
    for k in ("batch", "agent_envs", "agent_steps", "rounds", "intensity_steps"):
        if int(cfg[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {cfg[k]!r}")
    cfg["patch"] = _size(cfg["patch"], "patch")
    if min(patch_shape(cfg)) < 4:  # the agents' 3x3x3 neighbourhoods and the continuity term need room
        raise ValueError(f"patch must be >= 4 voxels, got {cfg['patch']!r}")
    if _is_zero(cfg["window"]):  # resolved here, so the report and the checkpoint hold the size used
        cfg["window"] = cfg["patch"]
    try:
        cfg["window"] = _size(cfg["window"], "window")
    except ValueError:
        raise ValueError(f"window must be >= 1 (or 0: the training patch), got {cfg['window']!r}") from None
    for k in ("ema", "warmup_frac", "transition_frac", "refit_frac", "crossfit_frac", "agent_noise_ratio",
              "refine_confidence",
              "forget_rate", "forget_ramp", "gamma", "lr_min_frac"):
        if not 0.0 <= float(cfg[k]) <= 1.0:
            raise ValueError(f"{k} must be in [0, 1], got {cfg[k]!r}")
    if cfg["crossfit_frac"] + cfg["warmup_frac"] + cfg["transition_frac"] + cfg["refit_frac"] >= 1.0:
        raise ValueError("crossfit_frac + warmup_frac + transition_frac + refit_frac must be < 1 "
                         "(Full RL takes the rest)")
    if int(cfg["crossfit_folds"]) < 2:
        raise ValueError(f"crossfit_folds must be >= 2, got {cfg['crossfit_folds']!r}")
    if (cfg["crossfit_frac"] > 0 or cfg["agent_consensus"] == "none") and cfg["agent_target"] != "given":
        # the consensus patches are cut where the given labels' patch source cuts them
        # (TrainingSet.crop_like_given), which is the agents' environment only with target "given"
        raise ValueError("crossfit_frac > 0 and agent_consensus 'none' need agent_target 'given'")
    if cfg["agent_consensus"] not in AGENT_CONSENSUS:
        raise ValueError(f"agent_consensus must be one of {', '.join(AGENT_CONSENSUS)}, "
                         f"got {cfg['agent_consensus']!r}")
    if cfg["agent_consensus"] == "none" and cfg["crossfit_frac"] > 0:
        raise ValueError("agent_consensus 'none' replaces the cross-fit consensus; set crossfit_frac 0")
    from agents.staged.label_refinement import ACCEPT_RULES

    if cfg["accept"] not in ACCEPT_RULES:
        raise ValueError(f"accept must be one of {', '.join(ACCEPT_RULES)}, got {cfg['accept']!r}")
    from agents.staged.label_refinement import AGENT_REWARDS

    if cfg["agent_reward"] not in AGENT_REWARDS:
        raise ValueError(f"agent_reward must be one of {', '.join(AGENT_REWARDS)}, got {cfg['agent_reward']!r}")
    for k in ("refine_from", "agent_target"):
        if cfg[k] not in ("given", "current"):
            raise ValueError(f"{k} must be 'given' or 'current', got {cfg[k]!r}")
    for k in ("lr", "agent_lr_mult"):
        if not float(cfg[k]) > 0:
            raise ValueError(f"{k} must be > 0, got {cfg[k]!r}")
    from agents.common.windows import FLIPS

    if cfg["refine_flips"] not in FLIPS:
        raise ValueError(f"refine_flips must be one of {', '.join(map(str, sorted(FLIPS)))}, "
                         f"got {cfg['refine_flips']!r}")
    if not float(cfg["accept_z"]) >= 0:
        raise ValueError(f"accept_z must be >= 0, got {cfg['accept_z']!r}")
    if int(cfg["intensity_every"]) < 0:
        raise ValueError(f"intensity_every must be >= 0, got {cfg['intensity_every']!r}")
    LossWeights(cfg["lambda_max"], cfg["alpha"], cfg["beta_max"], cfg["beta_ramp"])  # validates
    from svl_env.noise import parse_noise

    parse_noise(cfg["agent_noise"])  # validates the spec (ValueError naming the problem)
    return cfg


def _is_zero(v) -> bool:
    return not isinstance(v, (list, tuple)) and int(v) == 0


def _size(v, what: str):
    """A patch / window size: an int (cubic) or three ints (per axis; a list, JSON-friendly);
    three equal sides become one int. ValueError unless every side is >= 1."""
    if isinstance(v, (list, tuple)):
        t = [int(x) for x in v]
        if len(t) != 3:
            raise ValueError(f"{what} must be one int or three ints, got {v!r}")
    else:
        t = [int(v)] * 3
    if min(t) < 1:
        raise ValueError(f"{what} must be >= 1, got {v!r}")
    return t[0] if len(set(t)) == 1 else t


def patch_shape(cfg: dict) -> tuple[int, int, int]:
    """The training patch of a config as (D, H, W) (``cfg["patch"]`` is an int or three ints)."""
    return as_triple(cfg["patch"], "patch")


class Clock:
    """Training budget clock: progress in [0, 1]; pausable (reports are not training)."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._paused_cpu = self._paused_wall = 0.0

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self._cpu0 - self._paused_cpu

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._wall0 - self._paused_wall

    def progress(self, update: int) -> float:
        return self.budget.progress(update, self.wall_s, self.cpu_s)

    @contextlib.contextmanager
    def paused(self):
        c, w = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self._paused_cpu += time.process_time() - c
            self._paused_wall += time.perf_counter() - w


@dataclass
class TrainResult:
    model: StagedNet
    refined: list[np.ndarray]  # output labels, one (D, H, W) bool per training case
    entries: list[dict]  # per stage and round: losses, rewards, agreement
    curves: dict[str, list]  # per update: "update", "stage", "round", "cpu_s", losses...
    updates: int
    cpu_s: float
    wall_s: float
    extra: dict = field(default_factory=dict)
    round_labels: list = field(default_factory=list)  # each refinement round's labels (for --eval-labels)


def lr_at(cfg: dict, p: float) -> float:
    """The learning rate at budget progress ``p`` (poly decay to ``lr_min_frac``)."""
    return scheduled_lr(cfg["lr"], p, power=cfg["lr_power"], min_frac=cfg["lr_min_frac"])


def dice_np(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


@torch.no_grad()
def predict_training(model: StagedNet, ts: TrainingSet, cfg: dict, device) -> list[np.ndarray]:
    """The model's masks (probability > 0.5) on every training image."""
    return [predict_probability(model, img, window=cfg["window"], device=device) > 0.5 for img in ts.images]


class Recorder:
    """Per-update curves and per (stage, round) aggregates."""

    KEYS = ("loss", "dice_loss", "value_loss", "policy_loss", "outcome_loss", "episode_reward", "agent_dice", "entropy",
            "q_term",
            "adv_abs", "w_dice", "w_value", "w_policy", "select_fg", "intensity_reward")

    def __init__(self):
        self.curves: dict[str, list] = {k: [] for k in ("update", "stage", "round", "cpu_s", "lr", *self.KEYS)}
        self.entries: list[dict] = []
        self._cur: dict | None = None

    def open(self, stage: str, rnd: int, update: int, cpu_s: float) -> None:
        self.close(update, cpu_s)
        self._cur = {"stage": stage, "round": rnd, "first_update": update, "cpu_s_start": cpu_s, "_vals": {}}

    def add(self, u: int, stage: str, rnd: int, cpu_s: float, lr: float, m: dict) -> None:
        c = self.curves
        c["update"].append(u)
        c["stage"].append(stage)
        c["round"].append(rnd)
        c["cpu_s"].append(round(cpu_s, 3))
        c["lr"].append(lr)
        for k in self.KEYS:
            v = m.get(k)
            v = float(v.detach()) if torch.is_tensor(v) else (None if v is None else float(v))
            c[k].append(v)
            if v is not None and self._cur is not None:
                self._cur["_vals"].setdefault(k, []).append(v)

    def close(self, update: int, cpu_s: float, **extra) -> dict | None:
        if self._cur is None:
            return None
        cur, self._cur = self._cur, None
        vals = cur.pop("_vals")
        cur.update(updates=update - cur["first_update"], cpu_s=round(cpu_s - cur.pop("cpu_s_start"), 2),
                   losses={k: float(np.mean(v)) for k, v in vals.items()
                           if k in ("loss", "dice_loss", "value_loss", "policy_loss", "outcome_loss")},
                   rewards={k: float(np.mean(v)) for k, v in vals.items()
                            if k in ("episode_reward", "agent_dice", "intensity_reward")},
                   weights={k[2:]: float(np.mean(v)) for k, v in vals.items() if k.startswith("w_")})
        cur.update(extra)
        self.entries.append(cur)
        return cur


class WeightEMA:
    """Exponential moving average of a model's parameters (decay ``d`` per update; 0 = off).

    The final model of every method is the average, not the last iterate: with small batches
    the last iterate's test Dice moved by up to 0.1 between two runs of the same method that
    stopped a few dozen updates apart (CPU-time budgets); the average over the last ~1/(1-d)
    updates is much steadier. Applied identically to every method."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()} if self.decay > 0 else None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if self.shadow is None:
            return
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)


def optimiser_step(model_params, opt, loss, max_norm) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model_params, float(max_norm))
    opt.step()
    return float(gn)

def progress_bar(total, desc, show):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="update" if total is None else "case", disable=not show, leave=False)
