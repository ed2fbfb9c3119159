"""PPO on Ray RLlib with a per-voxel RLModule (extra ``rllib``). Importing this package needs
only torch; Ray is imported when training starts.

net (``VoxelPPONet``, plain torch), policy (``RLlibPolicy`` and its checkpoint), config (the
``PPOConfig``, env config, starting Ray), module (the RLModule and distribution; imports Ray),
train (the training loop and run folder)."""

from agents.rllib.config import INSTALL_HINT, build_config, init_ray
from agents.rllib.net import VoxelPPONet, net_config_for
from agents.rllib.policy import KIND, RLlibPolicy
from agents.rllib.train import train_from_args, train_rllib

__all__ = ["INSTALL_HINT", "KIND", "RLlibPolicy", "VoxelPPONet", "build_config", "init_ray", "net_config_for",
           "train_from_args", "train_rllib"]
