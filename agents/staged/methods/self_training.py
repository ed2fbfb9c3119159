"""``self-training``: svl-drl's stages and refinement rounds with the label agents taken out --
the control that says how much of svl-drl's label refinement the agents themselves contribute.

The same stage plan (``svl_drl.stage_plan``: Warmup, Transition, Full RL at ``warmup_frac`` /
``transition_frac``), the same rounds at the same budget fractions (Full RL split into
``rounds`` equal parts), the same optimiser, learning-rate schedule, weight average and budget
clock (``svl_drl.StagedRun``; refinement counts as training work), but a model without agent
decoders (``make_model(agents=False)``): every update, in every stage, is the Warmup loss
(soft Dice + BCE of the segmentation decoder) on the current training labels; the stage names
are kept in the report so the curves line up with svl-drl's.

At the end of each round the candidate labels are the segmentation decoder's own predictions
on the training images (foreground probability > 0.5, the same sliding window and flip
averaging, ``refine_flips``, as svl-drl's refinement) instead of the label agents' edits.
They pass through the same acceptance step as the agents' proposals
(``label_refinement.accept_proposals`` with the same ``accept`` rule, against the labels being
refined -- the given ones, ``refine_from``). Under the ``average``
(default) and ``consensus`` rules every voxel where the prediction differs from the label is
accepted (the candidate *is* the decoder's prediction), so self-training then trains each
round on its own predictions; under ``zscore`` a case's prediction is taken only where it stands out. The
accepted result becomes the next round's training labels
(``TrainingSet.set_current``). The output labels are the last round's (made with the
weight-averaged model at the end of the budget, as svl-drl's are).

With a cross-fit stage (``crossfit_frac``, ``agents.staged.crossfit``) the out-of-fold
consensus takes the place the agents' input has in svl-drl: the acceptance rules judge the
decoder's candidate against it, so under ``average`` the label becomes the mean of the
decoder's and the out-of-fold probability > 0.5 -- the same information the agents get, pooled
without them.
"""

from __future__ import annotations

import numpy as np

from agents.common.budget import Budget
from agents.staged.data import TrainingSet
from agents.staged.harness import TrainResult
from agents.staged.label_refinement import accept_proposals
from agents.staged.methods.svl_drl import StagedRun, stage_plan
from agents.staged.model import make_model
from agents.staged.segment import predict_probability

__all__ = ["SelfTrainingRun", "train"]


class SelfTrainingRun(StagedRun):
    """``StagedRun`` whose refinement rounds take their candidate labels from the segmentation
    decoder's predictions instead of the label agents (module doc)."""

    refined_source = "model predictions on the training images (p > 0.5), accepted per case (self-training, last round)"

    def round_labels_of(self, bar) -> tuple[list[np.ndarray], dict]:
        labels = self.ts.given if self.cfg["refine_from"] == "given" else self.ts.current
        consensus = self.ts.consensus
        proposals, probs = [], []
        for i, img in enumerate(self.ts.images):
            prob = predict_probability(self.model, img, window=self.cfg["window"], device=self.device,
                                       flips=int(self.cfg["refine_flips"]))
            proposals.append(prob)  # accept_proposals: the candidate label is prob > 0.5
            probs.append(prob if consensus is None else consensus[i])
            bar.update(1)
        return accept_proposals(labels, proposals, probs, self.cfg)

    def _update(self, u: int, stage: str, sp: float) -> dict:
        m = super()._update(u, stage, sp)  # no agents: the segmentation loss alone, in every stage
        m.update(w_dice=1.0, w_value=0.0, w_policy=0.0)
        return m


def train(ts: TrainingSet, *, budget: Budget, seed: int, stages, cfg: dict, model_config: dict | None, device,
          progress: bool = True, precision: str = "fp32") -> TrainResult:
    """svl-drl's stage plan over the enabled ``stages`` without agents; rounds only if Full RL is enabled."""
    plan = stage_plan(stages, cfg)
    model = make_model({**(model_config or {}), "agents": False}, seed=seed).to(device)
    model.precision = precision
    return SelfTrainingRun(model, ts, plan, cfg, budget, seed, device, progress).run()
