"""vA3C: the voxel-level A3C (PixelRL-style per-voxel actor-critic), trained in stages."""

from agents.va3c.run import (DEFAULT_CONFIG, KIND, STAGES, Budget, Learner, RewardMapConv, VA3CModel, VA3CPolicy,
                             VA3CRun, make_config, resolve_checkpoint, supervised_loss, train_va3c, update_seed)
from agents.va3c.train import run_training, train_from_args

__all__ = ["DEFAULT_CONFIG", "KIND", "STAGES", "Budget", "Learner", "RewardMapConv", "VA3CModel", "VA3CPolicy",
           "VA3CRun", "make_config", "resolve_checkpoint", "supervised_loss", "train_va3c", "update_seed",
           "run_training", "train_from_args"]
