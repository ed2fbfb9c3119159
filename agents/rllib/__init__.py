"""PPO on Ray RLlib with a per-voxel RLModule (extra ``rllib``). Importing this package needs
only torch; Ray is imported when training starts."""

from agents.rllib.train import (INSTALL_HINT, KIND, RLlibPolicy, VoxelPPONet, build_config, init_ray,
                                net_config_for, train_from_args, train_rllib)

__all__ = ["INSTALL_HINT", "KIND", "RLlibPolicy", "VoxelPPONet", "build_config", "init_ray", "net_config_for",
           "train_from_args", "train_rllib"]
