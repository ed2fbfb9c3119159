"""The per-voxel action space: Gymnasium's ``MultiDiscrete`` with a one-line ``repr``.

``MultiDiscrete.__repr__`` prints its ``nvec`` array: for a 32^3 patch that is a 48-line
summary of 32,768 copies of K. The subclass changes nothing but the text, so ``check_env``,
``batch_space``, SB3 and RLlib (all ``isinstance`` checks) see a ``MultiDiscrete``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class VoxelActions(gym.spaces.MultiDiscrete):
    """``MultiDiscrete(np.full(shape, num_actions))``: one of ``num_actions`` actions per voxel.

    ``str`` / ``repr``: ``VoxelActions(4 per voxel, shape=(32, 32, 32))``.
    """

    def __init__(self, shape: tuple[int, ...], num_actions: int, seed=None):
        super().__init__(np.full(shape, num_actions, dtype=np.int64), dtype=np.int64, seed=seed)

    @property
    def num_actions(self) -> int:
        """K, the number of actions every voxel chooses from."""
        return int(self.nvec.flat[0])

    def __repr__(self) -> str:
        return f"VoxelActions({self.num_actions} per voxel, shape={self.shape})"
