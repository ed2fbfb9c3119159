"""Memory guard: refuse a batch that cannot fit, up front, instead of being killed by the OOM killer.

A vector env keeps every environment's state as (B, D, H, W) tensors, so memory grows as
``num_envs × D·H·W``: 64 environments of 256³ need ~500 GiB. Without a guard such a
configuration allocates until the kernel kills the process (no Python exception, no message)
or the machine swaps to a halt. ``check`` compares an estimate with the memory available now
and raises :class:`InsufficientMemoryError` (a ``ValueError``: the CLI exits 2 with its one
line) naming the estimate, the limit and the options that reduce it.

Available memory is read by hand rather than through a library (psutil): the whole need is
three small sources -- ``/proc/meminfo`` ``MemAvailable`` (what the kernel can hand out
without swapping), the cgroup limit of the container if it is lower (``/sys/fs/cgroup``,
v2 and v1: the OOM killer acts at the cgroup limit, not at the machine's), and
``os.sysconf`` as the portable fallback -- plus ``torch.cuda.mem_get_info`` on CUDA. A
dependency for that is not worth it.

Overrides: ``SVL_DRL_MEMORY_LIMIT`` (bytes, or a size such as ``"512MiB"``, ``"2.5GB"``) sets
the available memory (tests, or a share of a machine); ``SVL_DRL_MEMORY_GUARD=0`` disables the
guard. The estimates are deliberately simple (counts of float32 volumes per environment,
calibrated on CPU and CUDA, see ``ENV_VOLUMES_PER_ENV``); they are meant to catch
configurations that are off by a large factor, not to budget the last 10 %. vA3C's training
estimate (``agents.va3c.estimate_training_bytes``) measured 0.98-1.08 of the CPU peak and is
~30 % above the CUDA peak (H100).

Also here: ``empty`` and ``Recycler``, how the env allocates the large buffers it hands out
every step (observations, reward maps) so that CPU page faults do not dominate their cost.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["InsufficientMemoryError", "Recycler", "available_bytes", "check", "empty", "env_bytes", "format_bytes",
           "parse_size"]

#: Peak float32 volumes per environment of one ``SVLDRLVectorEnv`` (state, observation, reward
#: map, transient step buffers, phantom generation at reset, the spaces' bounds), measured as
#: peak RSS growth on CPU (4 envs of 64³: 80 without action rewards; +14 per action with
#: ``action_rewards=True``) and as ``torch.cuda.max_memory_allocated`` on an H100 (64 envs of 64³
#: and 8 of 128³: 21; 16 of 64³ with action rewards: 53 -- the spaces and numpy copies stay on
#: the host there).
ENV_VOLUMES_PER_ENV = {"cpu": 80, "cuda": 22}
ACTION_REWARD_VOLUMES_PER_ACTION = {"cpu": 14, "cuda": 8}
#: Fraction of the available memory a single allocation plan may use (the rest: the Python
#: process, the network, allocator fragmentation, other programs).
USABLE_FRACTION = 0.9

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


class InsufficientMemoryError(ValueError):
    """A configuration whose estimated memory exceeds what is available (raised before allocating)."""


_NP_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.int32: "int32", torch.int64: "int64",
              torch.uint8: "uint8", torch.int8: "int8"}


def empty(shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An uninitialised tensor for a large, fresh buffer (an observation, a reward map).

    On CPU the memory is numpy's: numpy asks the kernel for transparent huge pages for large
    arrays, torch's allocator does not, and fresh 4 KiB pages cost a fault each (~8 us in a VM):
    a 100 MB observation is 25k faults, more than filling it. Elsewhere a plain ``torch.empty``.
    """
    if torch.device(device).type == "cpu" and dtype in _NP_DTYPES:
        return torch.from_numpy(np.empty(shape, dtype=_NP_DTYPES[dtype]))
    return torch.empty(shape, dtype=dtype, device=device)


class Recycler:
    """``empty`` for a buffer handed out anew every step (an observation), reusing the one it
    handed out last once the caller has let go of it.

    A fresh large CPU array's pages are zeroed by the kernel on first touch: for a 16 x 64^3
    observation (100 MB) that is ~10 ms per step. If nothing but this object refers to the
    array handed out last time under ``name`` -- no view, tensor or copy-free wrapper of it is
    alive (CPython reference counts) -- its memory is handed out again; no caller can tell.
    """

    def __init__(self):
        self._last: dict = {}

    def empty(self, name: str, shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
        if torch.device(device).type != "cpu" or dtype not in _NP_DTYPES:
            return empty(shape, dtype, device)
        arr = self._last.get(name)
        # 3 references when unused elsewhere: the dict's, ``arr`` and getrefcount's argument
        if (arr is None or arr.shape != tuple(shape) or arr.dtype != _NP_DTYPES[dtype]
                or sys.getrefcount(arr) > 3):
            arr = self._last[name] = np.empty(shape, dtype=_NP_DTYPES[dtype])
        return torch.from_numpy(arr)


def parse_size(text: str) -> int:
    """``"123"`` / ``"512MiB"`` / ``"2.5 GB"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (examples: 4000000000, 512MiB, 2.5GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _cgroup_free() -> int | None:
    """Room left under the cgroup's memory limit (v2, then v1), or None without a limit."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_f), _read_int(usage_f)
        if limit is not None and usage is not None and limit < 2 ** 60:
            return max(limit - usage, 0)
    return None


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # portable fallback: free physical pages (underestimates: page cache counts as used)
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device="cpu") -> int | None:
    """Memory that can be allocated now on ``device`` (bytes), or None if unknown.

    ``SVL_DRL_MEMORY_LIMIT`` overrides it for every device.
    """
    env = os.environ.get("SVL_DRL_MEMORY_LIMIT")
    if env:
        return parse_size(env)
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
            return int(free)
        except Exception:  # not initialised / not available: the device check reports that
            return None
    if dev.type != "cpu":  # mps, xpu...: no portable query
        return None
    host, cg = _host_available(), _cgroup_free()
    values = [v for v in (host, cg) if v is not None]
    return min(values) if values else None


def enabled() -> bool:
    return os.environ.get("SVL_DRL_MEMORY_GUARD", "1").strip().lower() not in ("0", "false", "no", "off")


def env_bytes(num_envs: int, patch_shape, n_actions: int = 4, action_rewards: bool = False, device="cpu") -> int:
    """Estimated peak bytes of one ``SVLDRLVectorEnv`` on ``device`` (state + step buffers)."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    vox = int(patch_shape[0]) * int(patch_shape[1]) * int(patch_shape[2])
    vols = ENV_VOLUMES_PER_ENV[kind] + (ACTION_REWARD_VOLUMES_PER_ACTION[kind] * int(n_actions)
                                        if action_rewards else 0)
    return int(num_envs) * vox * 4 * vols


def describe_batch(num_envs: int, patch_shape) -> str:
    d, h, w = (int(s) for s in patch_shape)
    patch = f"{d}³" if d == h == w else f"{d}×{h}×{w}"
    return f"num_envs={int(num_envs)} × patch {patch}"


def check(needed: int, what: str, hint: str, device="cpu", available: int | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` if ``needed`` bytes exceed the usable memory.

    ``what``: the configuration in words ("num_envs=64 × patch 256³"); ``hint``: the options
    that reduce it ("lower num_envs or patch_size"). ``available``: bytes (default: measured,
    see :func:`available_bytes`). Does nothing when the guard is disabled or memory is unknown.
    """
    if not enabled():
        return
    avail = available_bytes(device) if available is None else int(available)
    if avail is None:
        return
    usable = USABLE_FRACTION * avail
    if needed > usable:
        where = "GPU memory" if torch.device(device).type == "cuda" else "memory"
        raise InsufficientMemoryError(
            f"{what} needs ~{format_bytes(needed)} of state, more than the {format_bytes(usable)} of {where} "
            f"available ({format_bytes(avail)} free, {USABLE_FRACTION:.0%} usable); {hint} "
            f"(or set SVL_DRL_MEMORY_GUARD=0 to try anyway)")
