"""``svl-drl``: the paper's staged framework -- Warmup -> Transition -> Full RL with rounds of label
refinement (see ``agents/staged/__init__`` for the whole picture). ``noisy`` is its Warmup stage
alone.

The budget is split by ``progress`` in [0, 1] into the enabled stages (``warmup_frac``,
``transition_frac``, the rest Full RL; a disabled stage's share goes to the others in proportion):

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
  the end of each the label agents act on every *given* annotation (``refine_labels``; an
  edit is accepted where the segmentation decoder agrees with it, ``accept_proposals``) and the
  result becomes the segmentation decoder's training labels for the next round. The agents'
  reward target stays the given annotation (``agent_target``), and each round refines the
  given annotation afresh (``refine_from``): refining refined labels with targets made of
  refined labels drifted towards the model's own predictions in every run we tried (labels
  and test Dice both got worse round after round). The last round's refinement (at the end
  of the budget) gives the output labels.
* **Cross-fit** (optional, ``crossfit_frac`` > 0; not in the paper): before Warmup,
  ``crossfit_folds`` segmentation networks, each trained on the cases outside one fold, give
  every training case a foreground probability from a network that never saw its label
  (``agents.staged.crossfit``). The label agents read it as their consensus state instead of
  the segmentation decoder's (which learns the given labels' noise), in their episodes and in
  refinement, and the acceptance rules judge against it.
* **Refit** (optional, ``refit_frac`` > 0; not in the paper): the last round is made at the end
  of Full RL instead, and the rest of the budget trains the segmentation decoder alone (the
  Warmup loss) on its labels -- from fresh weights and a restarted learning-rate schedule with
  ``refit_reinit``. The output labels are that round's.

The label agents' L_value / L_policy reach their own decoders only (``agent_encoder_grad``
False, the default): the shared encoder learns from L_dice and the intensity episodes.
The segmentation loss ``L_dice`` is ``losses.seg_loss`` (soft Dice + ``bce`` x BCE) for every
method. λ, α, β follow ``losses.stage_weights``.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.common.budget import Budget, update_seed
from agents.staged.data import TrainingSet
from agents.staged.harness import (Clock, Recorder, TrainResult, WeightEMA, dice_np, lr_at, optimiser_step,
                                   patch_shape, predict_training, progress_bar)
from agents.staged.label_refinement import LabelAgentEpisodes, refine_labels
from agents.staged.losses import LossWeights, seg_loss, stage_weights
from agents.staged.model import make_model

__all__ = ["STAGES", "stage_plan", "StagedRun", "train"]

STAGES = ("warmup", "transition", "full")


def stage_plan(stages, cfg: dict) -> list[tuple[str, float, float]]:
    """[(stage, start, end)] over progress [0, 1] for the enabled ``stages`` (in paper order),
    preceded by ``"crossfit"`` (``crossfit_frac``) and followed by ``"refit"`` (``refit_frac``)
    when Full RL is enabled and those fractions are > 0."""
    stages = [s for s in STAGES if s in set(stages)]
    if not stages:
        raise ValueError(f"at least one stage of {', '.join(STAGES)} is needed")
    refit = float(cfg.get("refit_frac", 0.0)) if "full" in stages else 0.0
    crossfit = float(cfg.get("crossfit_frac", 0.0)) if "full" in stages else 0.0
    if refit > 0:
        stages.append("refit")
    if crossfit > 0:
        stages.insert(0, "crossfit")
    share = {"crossfit": crossfit, "warmup": cfg["warmup_frac"], "transition": cfg["transition_frac"],
             "full": 1.0 - crossfit - cfg["warmup_frac"] - cfg["transition_frac"] - refit, "refit": refit}
    total = sum(share[s] for s in stages)
    plan, acc = [], 0.0
    for s in stages:
        w = share[s] / total if total > 0 else 1.0 / len(stages)
        plan.append((s, acc, acc + w))
        acc += w
    plan[-1] = (plan[-1][0], plan[-1][1], 1.0)
    return plan


def train(ts: TrainingSet, *, budget: Budget, seed: int, stages, cfg: dict, model_config: dict | None, device,
          progress: bool = True, precision: str = "fp32") -> TrainResult:
    """The staged framework over the enabled ``stages``; the label agents exist only when a stage needs them."""
    plan = stage_plan(stages, cfg)
    agents = any(s in ("transition", "full") for s, _, _ in plan)
    model = make_model({**(model_config or {}), "agents": agents}, seed=seed).to(device)
    model.precision = precision
    return StagedRun(model, ts, plan, cfg, budget, seed, device, progress).run()


class StagedRun:
    """One run of a stage plan: the optimiser, the agents' episodes, the refinement rounds."""

    refined_source = "label agents (last round)"  # report's refined_labels_from when rounds ran

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
        self.rec = Recorder()
        self.ema = WeightEMA(model, cfg["ema"])
        self.patch = patch_shape(cfg)
        self.seg_loss = lambda logits, target: seg_loss(logits, target, bce=float(cfg["bce"]))
        self.episodes = None
        if model.has_agents:
            self.episodes = LabelAgentEpisodes(
                ts, num_envs=cfg["agent_envs"], patch_shape=self.patch, max_steps=cfg["agent_steps"],
                noise=cfg["agent_noise"], noise_ratio=cfg["agent_noise_ratio"], reward_weights=cfg["reward_weights"],
                gamma=cfg["gamma"], entropy_coef=cfg["entropy_coef"], q_coef=cfg["q_coef"],
                outcome_coef=cfg["outcome_coef"], target=cfg["agent_target"],
                encoder_grad=bool(cfg["agent_encoder_grad"]), reward=cfg["agent_reward"], device=device)
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
        # with a Refit stage every round (the last at the end of Full RL) happens inside the loop,
        # and Refit trains on the last round's labels; without one the last round is made at the
        # end of the budget by the weight-averaged model and only gives the output labels
        self.rounds_in_loop = len(self.refine_at) - (0 if any(s == "refit" for s, _, _ in plan) else 1)
        self.crossfit = None  # the cross-fit stage's networks while it runs
        self.crossfit_folds: list[list[str]] | None = None  # case names per fold, once it has run
        self.refined: list[np.ndarray] | None = None
        self.refinements: list[dict] = []
        self.round_labels: list[list[np.ndarray]] = []

    def stage_at(self, p: float) -> tuple[str, float]:
        for s, a, b in self.plan:
            if p < b:
                return s, (p - a) / max(b - a, 1e-9)
        s, a, b = self.plan[-1]
        return s, 1.0

    def _agreement(self, probs=None) -> dict:
        """Agreement of the model's predictions (or of ``probs`` > 0.5, e.g. the cross-fit
        networks' out-of-fold ones) with the given labels (mean Dice over cases)."""
        if probs is not None:
            pred = [p > 0.5 for p in probs]
        else:
            pred = predict_training(self.model, self.ts, self.cfg, self.device)
        return {"pred_vs_given_dice": float(np.mean([dice_np(p, g) for p, g in zip(pred, self.ts.given)]))}

    def round_labels_of(self, bar) -> tuple[list[np.ndarray], dict]:
        """A refinement round's new training labels and the acceptance info (``accept_proposals``):
        here the label agents' proposals (``refine_labels``). Subclasses swap the candidates'
        source (``self_training``). ``bar.update(1)`` per case."""
        return refine_labels(self.model, self.ts, cfg=self.cfg, device=self.device, progress=bar)

    def _refine(self, clock, u: int, rnd: int, last: bool) -> None:
        bar = progress_bar(len(self.ts), f"refine labels (round {rnd})", self.show)
        new, acc = self.round_labels_of(bar)
        self.round_labels.append(new)
        bar.close()
        with clock.paused():
            changed = float(np.mean([np.mean(n != c) for n, c in zip(new, self.ts.current)]))
            info = {"round": rnd, "update": u, "cpu_s": round(clock.cpu_s, 2),
                    "refined_vs_given_dice": float(np.mean([dice_np(n, g) for n, g in zip(new, self.ts.given)])),
                    "refined_vs_previous_dice": float(np.mean([dice_np(n, c) for n, c in zip(new, self.ts.current)])),
                    "voxels_changed": changed, "cases_accepted": acc["n_accepted"],
                    "accepted": [self.ts.names[i] for i in acc["accepted"]],
                    **{k: acc[k] for k in ("rule", "added", "removed", "net_edit", "z")}}
            self.refinements.append(info)
        self.refined = new
        if not last:
            self.ts.set_current(new)

    def run(self) -> TrainResult:
        clock = Clock(self.budget)
        cfg, model = self.cfg, self.model
        self.ts.consensus = None  # a cross-fit consensus is this run's own (made by its first stage)
        if cfg["agent_consensus"] == "none":  # a constant: the agents see no one's prediction
            self.ts.consensus = [np.full(img.shape, 0.5, np.float32) for img in self.ts.images]
        model.train()
        u, rnd = 0, 1 if self.refine_at else 0
        stage_now = None
        bar = progress_bar(None, "train", self.show)
        refine_idx = 0
        while True:
            p = clock.progress(u)
            while refine_idx < self.rounds_in_loop and p >= self.refine_at[refine_idx]:
                with clock.paused():
                    agree = self._agreement()
                self.rec.close(u, clock.cpu_s, **agree)
                self._refine(clock, u, rnd, last=False)
                self.rec.entries[-1]["refinement"] = self.refinements[-1]
                refine_idx += 1
                if refine_idx < len(self.refine_at):
                    rnd += 1
                    self.rec.open(stage_now, rnd, u, clock.cpu_s)
                else:  # the last round ends Full RL: Refit opens next
                    stage_now = None
                p = clock.progress(u)
            if p >= 1.0:
                break
            stage, sp = self.stage_at(p)
            if stage != stage_now:
                if stage_now == "crossfit":
                    self._end_crossfit()
                if stage_now is not None:
                    with clock.paused():
                        agree = self._agreement(self.ts.consensus if stage_now == "crossfit" else None)
                    self.rec.close(u, clock.cpu_s, **agree)
                stage_now = stage
                if stage == "refit" and cfg["refit_reinit"]:
                    self._reinitialise()
                if stage == "crossfit":
                    from agents.staged.crossfit import CrossFit

                    self.crossfit = CrossFit(self.ts, cfg, dict(model.config), seed=self.seed, device=self.device,
                                             precision=model.precision)
                self.rec.open(stage, rnd, u, clock.cpu_s)
            if stage == "crossfit" or (stage == "refit" and cfg["refit_reinit"]):
                lr = lr_at(cfg, sp)  # fresh networks: the schedule runs over their stage
            else:
                lr = lr_at(cfg, p)
            if stage == "crossfit":
                m = self.crossfit.update(u, lr, update_seed(self.seed, u))
            else:
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
        if self.refine_at and self.rounds_in_loop < len(self.refine_at):  # the last round: the output labels
            self._refine(clock, u, rnd, last=True)
            self.rec.entries[-1]["refinement"] = self.refinements[-1]
        cpu_s, wall_s = clock.cpu_s, clock.wall_s
        if self.refined is None:
            refined = predict_training(model, self.ts, cfg, self.device)
            source = "model predictions on the training images"
        else:
            refined = self.refined
            source = self.refined_source
        model.eval()
        return TrainResult(model, refined, self.rec.entries, self.rec.curves, u, cpu_s, wall_s,
                           round_labels=self.round_labels,
                           extra={"refinements": self.refinements, "refined_labels_from": source,
                                  "stage_plan": [{"stage": s, "start": a, "end": b} for s, a, b in self.plan],
                                  **({"crossfit_folds": self.crossfit_folds} if self.crossfit_folds else {}),
                                  "refine_at_progress": self.refine_at})

    def _end_crossfit(self) -> None:
        """The cross-fit networks' out-of-fold probabilities become the training set's consensus
        (training work: the clock runs); the networks are dropped."""
        bar = progress_bar(len(self.ts), "cross-fit consensus", self.show)
        self.ts.consensus = self.crossfit.out_of_fold(progress=bar)
        bar.close()
        self.crossfit_folds = [[self.ts.names[i] for i in f] for f in self.crossfit.folds]
        self.crossfit = None

    def _reinitialise(self) -> None:
        """Refit from fresh weights (``refit_reinit``): the network that learnt the given labels
        has also learnt some of their noise, which a continued training on cleaner labels at the
        end of a decayed schedule does not unlearn. New weights (seed + 1), optimiser state and
        weight average; the last round's labels (already made) are all that is kept."""
        fresh = make_model(dict(self.model.config), seed=self.seed + 1).to(self.device)
        self.model.load_state_dict(fresh.state_dict())
        self.opt.state.clear()
        self.ema = WeightEMA(self.model, self.cfg["ema"])

    def _update(self, u: int, stage: str, sp: float) -> dict:
        cfg, model = self.cfg, self.model
        useed = update_seed(self.seed, u)
        w = stage_weights(stage, sp, self.weights)
        m = {"w_dice": w["dice"], "w_value": w["value"], "w_policy": w["policy"]}
        if stage in ("warmup", "refit") or self.episodes is None:
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
        optimiser_step(model.parameters(), self.opt, loss, cfg["max_grad_norm"])
        self.ema.update(model)
        m["loss"] = float(loss.detach())
        return m
