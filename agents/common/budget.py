"""Training budgets, their clocks, learning-rate schedules and per-update seeds (every trainer)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

#: budget clocks: wall-clock seconds, or CPU seconds of this process (all its threads)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

LR_SCHEDULES = ("poly", "cosine", "constant")


@dataclass
class Budget:
    """Training budget; whichever limit is reached first ends the run.

    ``updates``: number of updates; ``minutes``: wall clock; ``cpu_minutes``: CPU time of the
    training process (sync mode) -- "10 minutes on 2 cores" is ``cpu_minutes=20``, a budget
    that other programs competing for the same cores do not shrink. Only an ``updates``
    budget makes a run repeatable: the others follow the machine's speed.
    """

    updates: int | None = None
    minutes: float | None = None
    cpu_minutes: float | None = None

    def __post_init__(self):
        if self.updates is None and self.minutes is None and self.cpu_minutes is None:
            self.updates = 200
        if self.updates is not None and int(self.updates) < 1:
            raise ValueError(f"updates must be >= 1, got {self.updates!r}")
        for k in ("minutes", "cpu_minutes"):
            v = getattr(self, k)
            if v is not None and not float(v) > 0:
                raise ValueError(f"{k} must be > 0, got {v!r}")

    def progress(self, update: int, elapsed_s: float, cpu_s: float = 0.0) -> float:
        """The fraction of the budget used (the largest of its limits' fractions)."""
        p = 0.0
        if self.updates is not None:
            p = max(p, update / float(self.updates))
        if self.minutes is not None:
            p = max(p, elapsed_s / (60.0 * float(self.minutes)))
        if self.cpu_minutes is not None:
            p = max(p, cpu_s / (60.0 * float(self.cpu_minutes)))
        return p

    def as_dict(self) -> dict:
        return {"updates": self.updates, "minutes": self.minutes, "cpu_minutes": self.cpu_minutes}


def scheduled_lr(lr: float, progress: float, *, schedule: str = "poly", power: float = 0.9,
                 min_frac: float = 0.0) -> float:
    """Learning rate at ``progress`` in [0, 1] of the budget (clipped), never below ``lr·min_frac``.

    ``poly``: ``lr·(1-p)^power`` (PixelRL's decay); ``cosine``: half a cosine from ``lr`` to the
    floor; ``constant``: ``lr``.
    """
    p = min(max(progress, 0.0), 1.0)
    lr0, floor = float(lr), float(lr) * float(min_frac)
    if schedule == "constant":
        return lr0
    if schedule == "cosine":
        return floor + (lr0 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    return max(floor, lr0 * (1.0 - p) ** float(power))


def update_seed(seed: int, *index: int) -> int:
    """A 31-bit seed from (seed, index...): the env seeds and sampling of one update."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(i) for i in index]]).generate_state(1)[0]
               & 0x7FFFFFFF)
