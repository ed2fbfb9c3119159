"""Test-wide settings.

Before torch loads OpenMP: idle threads sleep instead of spinning. The suite runs on 2 shared
cores and starts subprocesses (CLI runs, async workers); spinning OpenMP threads of one
process starved the others (training steps 10-20x slower under contention, measured).
Subprocesses inherit the setting.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after it (timing-sensitive and learning tests)."""
    import torch  # here, not at the top: OMP_WAIT_POLICY must be set before torch loads

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: the module of ``benchmarks/<name>.py`` (scripts, not a package), loaded once."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    cache = {}

    def load(name: str):
        if name not in cache:
            spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", root / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            cache[name] = mod
        return cache[name]

    return load
