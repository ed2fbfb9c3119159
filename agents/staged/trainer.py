"""The staged trainer: Warmup -> Transition -> Full RL with rounds of label refinement, and the
comparators trained with the same backbone and budget.

Methods (``METHODS``):

- ``"svl-drl"`` (default): the paper's staged framework (see ``agents/staged/__init__`` for
  the whole picture). The budget is split by ``progress`` in [0, 1] into the enabled stages
  (``warmup_frac``, ``transition_frac``, the rest Full RL; a disabled stage's share goes to the
  others in proportion):

  * **Warmup** -- ``L = L_dice`` of the segmentation decoder on the given labels (patches from
    ``TrainingSet.sample``).
  * **Transition** -- ``L = (1 - λ) L_dice + λ L_value``: label-agent episodes in the
    environment (``LabelAgentEpisodes``); the critic (value decoder) learns the n-step returns
    of the still-untrained (keep-biased) policy; the policy is not updated yet.
  * **Full RL** -- ``L = (1 - α - β) L_dice + α L_value + β L_policy`` on label-agent episodes
    and, every ``intensity_every``-th update, on an episode of the paper's intensity agents
    (``IntensityAgentEpisodes``: the environment's ``intensity`` action set with this network as
    its segmenter; the segmentation loss of that update is taken on the agents' edited volume).
  * **Rounds** (the dynamic iterative update): Full RL is split into ``rounds`` equal parts; at
    the end of each the label agents act on every *given* annotation (``refine_labels``; a
    case's edits are accepted only where the agents' net edit stands out from the other cases'
    and points the way the segmentation consensus disagrees with that annotation) and the
    result becomes the segmentation decoder's training labels for the next round. The agents'
    reward target stays the given annotation (``agent_target``), and each round refines the
    given annotation afresh (``refine_from``): refining refined labels with targets made of
    refined labels drifted towards the model's own predictions in every run we tried (labels
    and test Dice both got worse round after round). The last round's refinement (at the end
    of the budget) gives the output labels.

  The label agents' L_value / L_policy reach their own decoders only (``agent_encoder_grad``
  False, the default): the shared encoder learns from L_dice and the intensity episodes.
  The segmentation loss ``L_dice`` is ``losses.seg_loss`` (soft Dice + ``bce`` x BCE) for every
  method. λ, α, β follow ``losses.stage_weights``.
- ``"noisy"``: plain training of the same encoder + segmentation decoder on the given labels for
  the whole budget (the Warmup loss throughout). Its "refined labels" are its predictions on the
  training images.
- ``"coteaching"``: Han et al. 2018 for segmentation (``coteaching.py``), two networks of the
  same backbone sharing the budget.

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

from agents.common.budget import Budget, scheduled_lr, update_seed
from agents.common.precision import resolve_precision
from agents.staged.data import TrainingSet
from agents.staged.label_refinement import LabelAgentEpisodes, refine_labels
from agents.staged.losses import LossWeights, seg_loss, stage_weights
from agents.staged.model import StagedNet, make_model
from agents.staged.segment import predict_probability

__all__ = ["METHODS", "STAGES", "DEFAULT_TRAIN", "make_train_config", "Clock", "TrainResult", "train",
           "stage_plan"]

METHODS = ("svl-drl", "noisy", "coteaching")
STAGES = ("warmup", "transition", "full")

DEFAULT_TRAIN: dict = {
    # data / optimisation (every method)
    "patch": 32, "batch": 4, "lr": 3e-3, "lr_power": 0.9, "lr_min_frac": 0.05, "bce": 1.0, "max_grad_norm": 5.0,
    "window": 64, "augment": False, "ema": 0.99,
    # stage schedule (svl-drl)
    # (phantoms, 4 CPU-min, 16 test cases, seeds 0-1: Warmup 0.5 with 2 rounds gave 0.692 test
    # Dice in one run, 0.3 with 3 rounds and accept_z 1.0 gave 0.735 on average, 0.15 gave 0.742;
    # with agent_encoder_grad off, 0.777 over seeds 0-3 on 64 test cases; README "Staged pipeline")
    "warmup_frac": 0.30, "transition_frac": 0.10, "rounds": 3,
    # loss weights (svl-drl)
    "lambda_max": 0.3, "alpha": 0.1, "beta_max": 0.3, "beta_ramp": 0.3,
    # label agents (svl-drl)
    "agent_envs": 4, "agent_steps": 2, "agent_noise": "mt", "agent_noise_ratio": 1.0, "gamma": 0.95,
    "entropy_coef": 0.01, "q_coef": 1.0, "outcome_coef": 1.0, "agent_lr_mult": 10.0, "refine_confidence": 0.0,
    # agent_encoder_grad: whether the label agents' value / policy losses also train the shared
    # encoder. Off: the encoder learns from the segmentation loss (and the intensity agents);
    # on phantoms at 4 CPU-min, routing the label agents' RL gradients into it cost 0.027 test
    # Dice (0.750 vs 0.777 over seeds 0-3, 64 test cases; README "Staged pipeline").
    "accept_z": 1.0, "agent_encoder_grad": False,
    "refine_from": "given", "agent_target": "given",
    "reward_weights": None,
    # intensity agents (svl-drl; the paper's action set): every n-th Full-RL update; 0 = off
    "intensity_every": 4, "intensity_steps": 2,
    # co-teaching
    "forget_rate": 0.2, "forget_ramp": 0.3,
}


def make_train_config(**overrides) -> dict:
    """``DEFAULT_TRAIN`` with ``overrides``; unknown keys / bad values raise ValueError."""
    unknown = set(overrides) - set(DEFAULT_TRAIN)
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}; valid: {sorted(DEFAULT_TRAIN)}")
    cfg = {**DEFAULT_TRAIN, **overrides}
    for k in ("patch", "batch", "agent_envs", "agent_steps", "rounds", "window", "intensity_steps"):
        if int(cfg[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {cfg[k]!r}")
    if int(cfg["patch"]) < 4:  # the agents' 3x3x3 neighbourhoods and the continuity term need room
        raise ValueError(f"patch must be >= 4 voxels, got {cfg['patch']!r}")
    for k in ("ema", "warmup_frac", "transition_frac", "agent_noise_ratio", "refine_confidence", "forget_rate",
              "forget_ramp", "gamma", "lr_min_frac"):
        if not 0.0 <= float(cfg[k]) <= 1.0:
            raise ValueError(f"{k} must be in [0, 1], got {cfg[k]!r}")
    if cfg["warmup_frac"] + cfg["transition_frac"] >= 1.0:
        raise ValueError("warmup_frac + transition_frac must be < 1 (Full RL takes the rest)")
    for k in ("refine_from", "agent_target"):
        if cfg[k] not in ("given", "current"):
            raise ValueError(f"{k} must be 'given' or 'current', got {cfg[k]!r}")
    for k in ("lr", "agent_lr_mult"):
        if not float(cfg[k]) > 0:
            raise ValueError(f"{k} must be > 0, got {cfg[k]!r}")
    if not float(cfg["accept_z"]) >= 0:
        raise ValueError(f"accept_z must be >= 0, got {cfg['accept_z']!r}")
    if int(cfg["intensity_every"]) < 0:
        raise ValueError(f"intensity_every must be >= 0, got {cfg['intensity_every']!r}")
    LossWeights(cfg["lambda_max"], cfg["alpha"], cfg["beta_max"], cfg["beta_ramp"])  # validates
    from svl_env.noise import parse_noise

    parse_noise(cfg["agent_noise"])  # validates the spec (ValueError naming the problem)
    return cfg


def stage_plan(stages, cfg: dict) -> list[tuple[str, float, float]]:
    """[(stage, start, end)] over progress [0, 1] for the enabled ``stages`` (in paper order)."""
    stages = [s for s in STAGES if s in set(stages)]
    if not stages:
        raise ValueError(f"at least one stage of {', '.join(STAGES)} is needed")
    share = {"warmup": cfg["warmup_frac"], "transition": cfg["transition_frac"],
             "full": 1.0 - cfg["warmup_frac"] - cfg["transition_frac"]}
    total = sum(share[s] for s in stages)
    plan, acc = [], 0.0
    for s in stages:
        w = share[s] / total if total > 0 else 1.0 / len(stages)
        plan.append((s, acc, acc + w))
        acc += w
    plan[-1] = (plan[-1][0], plan[-1][1], 1.0)
    return plan


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


def _lr(cfg: dict, p: float) -> float:
    return scheduled_lr(cfg["lr"], p, power=cfg["lr_power"], min_frac=cfg["lr_min_frac"])


def _dice_np(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


@torch.no_grad()
def predict_training(model: StagedNet, ts: TrainingSet, cfg: dict, device) -> list[np.ndarray]:
    """The model's masks (probability > 0.5) on every training image."""
    return [predict_probability(model, img, window=cfg["window"], device=device) > 0.5 for img in ts.images]


class _Recorder:
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


def _step(model_params, opt, loss, max_norm) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model_params, float(max_norm))
    opt.step()
    return float(gn)


def train(method: str, ts: TrainingSet, *, budget: Budget, seed: int = 0, stages=STAGES, config: dict | None = None,
          model_config: dict | None = None, device="cpu", progress: bool = True,
          precision: str | None = None) -> TrainResult:
    """Train ``method`` on the training set within ``budget``. Never reads anything but ``ts``.

    ``precision``: auto (None), fp32 or bf16 (``agents.common.precision``) for every forward pass
    of training and label refinement; the resolved value is ``extra["precision"]``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    cfg = make_train_config(**(config or {}))
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if method == "coteaching":
        from agents.staged.coteaching import train_coteaching

        result = train_coteaching(ts, budget=budget, seed=seed, cfg=cfg, model_config=model_config, device=device,
                                  progress=progress, precision=precision)
    else:
        plan = stage_plan(stages if method == "svl-drl" else ("warmup",), cfg)
        agents = method == "svl-drl" and any(s in ("transition", "full") for s, _, _ in plan)
        model = make_model({**(model_config or {}), "agents": agents}, seed=seed).to(device)
        model.precision = precision
        result = _StagedRun(model, ts, plan, cfg, budget, seed, device, progress).run()
    result.extra["precision"] = precision
    return result


class _StagedRun:
    def __init__(self, model, ts, plan, cfg, budget, seed, device, progress):
        self.model, self.ts, self.plan, self.cfg = model, ts, plan, cfg
        self.budget, self.seed, self.device, self.show = budget, int(seed), device, progress
        self.weights = LossWeights(cfg["lambda_max"], cfg["alpha"], cfg["beta_max"], cfg["beta_ramp"])
        # Two parameter groups: the shared encoder + segmentation decoder at ``lr``, the agents'
        # decoders and heads at ``agent_lr_mult`` x ``lr`` -- they start learning only in the
        # Transition / Full RL stages and must catch up within a fraction of the budget.
        agent_names = ("policy_decoder", "value_decoder", "label_head", "intensity_head", "value_head")
        agent_p = [p for n, p in model.named_parameters() if n.split(".")[0] in agent_names]
        ids = {id(p) for p in agent_p}
        groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "mult": 1.0}]
        if agent_p:
            groups.append({"params": agent_p, "mult": float(cfg["agent_lr_mult"])})
        self.opt = torch.optim.Adam([{**g, "lr": cfg["lr"] * g["mult"]} for g in groups])
        self.rec = _Recorder()
        self.ema = WeightEMA(model, cfg["ema"])
        self.patch = (int(cfg["patch"]),) * 3
        self.seg_loss = lambda logits, target: seg_loss(logits, target, bce=float(cfg["bce"]))
        self.episodes = None
        if model.has_agents:
            self.episodes = LabelAgentEpisodes(
                ts, num_envs=cfg["agent_envs"], patch_shape=self.patch, max_steps=cfg["agent_steps"],
                noise=cfg["agent_noise"], noise_ratio=cfg["agent_noise_ratio"], reward_weights=cfg["reward_weights"],
                gamma=cfg["gamma"], entropy_coef=cfg["entropy_coef"], q_coef=cfg["q_coef"],
                outcome_coef=cfg["outcome_coef"], target=cfg["agent_target"],
                encoder_grad=bool(cfg["agent_encoder_grad"]), device=device)
        self.intensity = None
        if model.has_agents and int(cfg["intensity_every"]) > 0:
            from agents.staged.intensity_agents import IntensityAgentEpisodes

            self.intensity = IntensityAgentEpisodes(
                ts, num_envs=cfg["agent_envs"], patch_shape=self.patch, max_steps=cfg["intensity_steps"],
                reward_weights=cfg["reward_weights"], gamma=cfg["gamma"], entropy_coef=cfg["entropy_coef"],
                device=device)
        full = [(a, b) for s, a, b in plan if s == "full"]
        self.refine_at = []
        if full:
            a, b = full[0]
            n = int(cfg["rounds"])
            self.refine_at = [a + (b - a) * k / n for k in range(1, n + 1)]
        self.refined: list[np.ndarray] | None = None
        self.refinements: list[dict] = []
        self.round_labels: list[list[np.ndarray]] = []

    def stage_at(self, p: float) -> tuple[str, float]:
        for s, a, b in self.plan:
            if p < b:
                return s, (p - a) / max(b - a, 1e-9)
        s, a, b = self.plan[-1]
        return s, 1.0

    def _agreement(self) -> dict:
        """Agreement of the model's predictions with the given labels (mean Dice over cases)."""
        pred = predict_training(self.model, self.ts, self.cfg, self.device)
        return {"pred_vs_given_dice": float(np.mean([_dice_np(p, g) for p, g in zip(pred, self.ts.given)]))}

    def _refine(self, clock, u: int, rnd: int, last: bool) -> None:
        bar = _bar(len(self.ts), f"refine labels (round {rnd})", self.show)
        new, acc = refine_labels(self.model, self.ts, max_steps=self.cfg["agent_steps"],
                                 confidence=self.cfg["refine_confidence"], window=self.cfg["window"],
                                 start=self.cfg["refine_from"], accept_z=self.cfg["accept_z"], device=self.device,
                                 progress=bar)
        self.round_labels.append(new)
        bar.close()
        with clock.paused():
            changed = float(np.mean([np.mean(n != c) for n, c in zip(new, self.ts.current)]))
            info = {"round": rnd, "update": u, "cpu_s": round(clock.cpu_s, 2),
                    "refined_vs_given_dice": float(np.mean([_dice_np(n, g) for n, g in zip(new, self.ts.given)])),
                    "refined_vs_previous_dice": float(np.mean([_dice_np(n, c) for n, c in zip(new, self.ts.current)])),
                    "voxels_changed": changed, "cases_accepted": acc["n_accepted"],
                    "accepted": [self.ts.names[i] for i in acc["accepted"]], "net_edit": acc["net_edit"],
                    "z": acc["z"]}
            self.refinements.append(info)
        self.refined = new
        if not last:
            self.ts.set_current(new)

    def run(self) -> TrainResult:
        clock = Clock(self.budget)
        cfg, model = self.cfg, self.model
        model.train()
        u, rnd = 0, 1 if self.refine_at else 0
        stage_now = None
        bar = _bar(None, "train", self.show)
        refine_idx = 0
        while True:
            p = clock.progress(u)
            while refine_idx < len(self.refine_at) - 1 and p >= self.refine_at[refine_idx]:
                with clock.paused():
                    agree = self._agreement()
                self.rec.close(u, clock.cpu_s, **agree)
                self._refine(clock, u, rnd, last=False)
                self.rec.entries[-1]["refinement"] = self.refinements[-1]
                refine_idx += 1
                rnd += 1
                self.rec.open(stage_now, rnd, u, clock.cpu_s)
                p = clock.progress(u)
            if p >= 1.0:
                break
            stage, sp = self.stage_at(p)
            if stage != stage_now:
                if stage_now is not None:
                    with clock.paused():
                        agree = self._agreement()
                    self.rec.close(u, clock.cpu_s, **agree)
                stage_now = stage
                self.rec.open(stage, rnd, u, clock.cpu_s)
            lr = _lr(cfg, p)
            for g in self.opt.param_groups:
                g["lr"] = lr * g["mult"]
            m = self._update(u, stage, sp)
            self.rec.add(u, stage, rnd, clock.cpu_s, lr, m)
            u += 1
            bar.update(1)
            bar.set_postfix_str(f"{stage} r{rnd} p={p:.2f} loss={m['loss']:.3f}", refresh=False)
        bar.close()
        if self.ema.shadow is not None:  # the output model is the weight average (WeightEMA)
            model.load_state_dict(self.ema.shadow)
        cpu_s = clock.cpu_s
        with clock.paused():
            agree = self._agreement()
        self.rec.close(u, cpu_s, **agree)
        if self.refine_at:  # the last round's refinement: the output labels
            self._refine(clock, u, rnd, last=True)
            self.rec.entries[-1]["refinement"] = self.refinements[-1]
        cpu_s, wall_s = clock.cpu_s, clock.wall_s
        if self.refined is None:
            refined = predict_training(model, self.ts, cfg, self.device)
            source = "model predictions on the training images"
        else:
            refined = self.refined
            source = "label agents (last round)"
        model.eval()
        return TrainResult(model, refined, self.rec.entries, self.rec.curves, u, cpu_s, wall_s,
                           round_labels=self.round_labels,
                           extra={"refinements": self.refinements, "refined_labels_from": source,
                                  "stage_plan": [{"stage": s, "start": a, "end": b} for s, a, b in self.plan],
                                  "refine_at_progress": self.refine_at})

    def _update(self, u: int, stage: str, sp: float) -> dict:
        cfg, model = self.cfg, self.model
        useed = update_seed(self.seed, u)
        w = stage_weights(stage, sp, self.weights)
        m = {"w_dice": w["dice"], "w_value": w["value"], "w_policy": w["policy"]}
        if stage == "warmup" or self.episodes is None:
            x, y = self.ts.sample(useed, cfg["batch"], self.patch, self.device, augment=bool(cfg["augment"]))
            loss = self.seg_loss(model(x), y)
            m.update(dice_loss=loss.detach())
        elif self.intensity is not None and stage == "full" and u % int(cfg["intensity_every"]) == 0:
            out = self.intensity.run(model, useed, self.seg_loss)
            loss = w["dice"] * out["dice_loss"] + w["value"] * out["value_loss"] + w["policy"] * out["policy_loss"]
            m.update(dice_loss=out["dice_loss"].detach(), intensity_reward=out["episode_reward"])
        else:
            out = self.episodes.run(model, useed, self.seg_loss, augment=bool(cfg["augment"]))
            loss = w["dice"] * out["dice_loss"] + w["value"] * out["value_loss"]
            if w["policy"] > 0:
                loss = loss + w["policy"] * out["policy_loss"]
            m.update({k: out[k] for k in ("dice_loss", "value_loss", "policy_loss", "outcome_loss", "episode_reward",
                                          "agent_dice", "entropy", "q_term", "adv_abs")})
        _step(model.parameters(), self.opt, loss, cfg["max_grad_norm"])
        self.ema.update(model)
        m["loss"] = float(loss.detach())
        return m


def _bar(total, desc, show):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="update" if total is None else "case", disable=not show, leave=False)
