"""Test-wide settings.

Before torch loads OpenMP: idle threads sleep instead of spinning. The suite runs on 2 shared
cores and starts subprocesses (CLI runs, async workers); spinning OpenMP threads of one
process starved the others (training steps 10-20x slower under contention, measured).
Subprocesses inherit the setting.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
