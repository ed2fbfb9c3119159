"""PPO and A2C from stable-baselines3 with a fully-convolutional per-voxel policy."""

from agents.sb3.policy import VoxelActorCriticPolicy, VoxelCategorical
from agents.sb3.train import SB3Policy, TrainingCallback, detect_algo, load_sb3, train_from_args, train_sb3
from agents.sb3.vec_env import SB3VecEnv

__all__ = ["VoxelActorCriticPolicy", "VoxelCategorical", "SB3Policy", "TrainingCallback", "detect_algo", "load_sb3",
           "train_from_args", "train_sb3", "SB3VecEnv"]
