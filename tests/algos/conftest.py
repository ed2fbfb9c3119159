"""Fixture of the learning tests: the mean Dice vs truth of a policy on held-out seeded episodes."""

import numpy as np
import pytest

from agents.eval.episodes import run_episodes

HELD_OUT_SEED = 10_000  # episodes no training run of these tests resets with


@pytest.fixture
def held_out_dice():
    def dice(policy, env: dict, episodes: int = 16) -> float:
        records, _ = run_episodes(policy, env, episodes, HELD_OUT_SEED, progress=False)
        return float(np.mean([r["dice"] for r in records]))

    return dice
