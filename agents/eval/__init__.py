"""Evaluation: seeded episodes, the benchmark and its leaderboard, refinement of NIfTI folders."""
