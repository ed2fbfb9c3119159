"""The staged SVL-DRL pipeline for datasets that only have noisy labels.

One network -- a shared 3D encoder with a segmentation, a value and a policy decoder
(``model.StagedNet``) -- is trained in the paper's stages (``methods.svl_drl``):

    Cross-fit   (optional, ``crossfit_frac``) 2 segmentation networks, each on the cases outside
                one fold: every case's out-of-fold probability becomes the label agents'
                consensus input (``crossfit``)
    Warmup      L = L_dice                                   on the given labels
    Transition  L = (1 - λ) L_dice + λ L_value               + label-agent episodes (critic only)
    Full RL     L = (1 - α - β) L_dice + α L_value + β L_policy, in rounds; after each round the
                label agents give their foreground probability on every given annotation, it is
                pooled with the segmentation decoder's (``accept``; no clean cases assumed), and
                the result is the next round's training labels (the dynamic iterative update);
                every 4th update is an intensity-agent episode
    Refit       L = L_dice on the last round's labels (optional, ``refit_frac``; the last
                round is then made at the end of Full RL; ``refit_reinit``: from fresh weights)

The label agents' value and policy losses train their decoders, not the shared encoder
(``agent_encoder_grad``, off by default: measured, sending them into the encoder cost test
Dice); the encoder learns from the segmentation loss and the intensity agents' episodes.

Voxel agents act in ``svl_env.SVLDRLVectorEnv``: label agents (``label_refinement``; the
``label`` action set, editing the annotation itself) and, optionally, the paper's intensity
agents (``intensity_agents``; the ``intensity`` action set with this network as segmenter). The
reward is the environment's Dice + continuity composite against the given annotation (the
label agents start from a fresh corruption of it by the environment's noise protocol) or the
current training labels (intensity agents); clean labels are never read in training. Comparators
with the same backbone and budget: ``noisy`` (plain training), ``coteaching`` (Han et al.
2018), ``trinet`` (Zhang et al. 2020) and ``self-training`` (svl-drl's stages and rounds with the
model's own predictions as the candidate labels, no agents); ``methods.METHODS`` is the table of
the methods, ``harness`` what they share.
``pipeline.run_pipeline`` and ``svl-drl pipeline`` write refined labels, the model and a report;
``segment`` (``svl-drl segment``) applies the model to new images of any size.
``fingerprint`` measures the training folder and derives the patch, batch and window a run
uses unless the user gives them.
"""

from agents.staged.model import DEFAULT_MODEL, MonaiMissingError, StagedNet, make_model
from agents.staged.pipeline import run_pipeline, score_masks
from agents.staged.segment import predict_probability, segment_folder
from agents.staged.harness import DEFAULT_TRAIN
from agents.staged.fingerprint import derive_settings, fingerprint
from agents.staged.methods import METHODS, STAGES, train

__all__ = ["StagedNet", "make_model", "DEFAULT_MODEL", "MonaiMissingError", "run_pipeline", "score_masks",
           "predict_probability", "segment_folder", "train", "METHODS", "STAGES", "DEFAULT_TRAIN",
           "fingerprint", "derive_settings"]
