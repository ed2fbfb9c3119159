"""svl_env: the SVL-DRL problem -- data, annotation noise, dynamics, reward, metrics, rendering.

``import svl_env`` registers ``SVLDRL-v0`` with Gymnasium.
"""

from .config import EnvConfig
from .env import SVLDRLEnv
from .vector_env import CHANNEL_NAMES, StepBeforeResetError, SVLDRLVectorEnv
from .dynamics import ACTION_SETS, INTENSITY_ACTIONS, LABEL_ACTIONS
from .reward import RewardWeights
from .data.sources import CaseSource, PhantomSource

import envs_registry as _envs_registry  # noqa: E402, F401  (registration side effect)

__all__ = ["EnvConfig", "SVLDRLEnv", "SVLDRLVectorEnv", "CHANNEL_NAMES", "StepBeforeResetError", "ACTION_SETS",
           "LABEL_ACTIONS", "INTENSITY_ACTIONS", "RewardWeights", "CaseSource", "PhantomSource"]
__version__ = "0.1.0"
