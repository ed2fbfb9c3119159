"""Mixed precision for every trainer: ``--precision {auto,fp32,bf16}``.

bf16 runs the network's matrix work (convolutions, matmuls) under ``torch.autocast`` in
bfloat16, on the CPU's matrix units (AMX, AVX512-BF16) or a GPU's tensor cores. Weights,
optimiser states, losses, advantages, log-probabilities and normalisation statistics stay
float32: autocast keeps reductions and normalisations in float32, and the trainers cast
network outputs to float32 before any loss. Checkpoints are therefore always float32 and load
with either precision.

``auto`` is bf16 where the device has native bf16 support (detected, not assumed) and fp32
elsewhere. An explicit ``bf16`` on a device without native support still runs (emulated,
slower than fp32), after one line on stderr that says so.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")

#: the CPU flags that make bf16 matrix work native (Linux /proc/cpuinfo names)
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device="cpu") -> bool:
    """Whether ``device`` does bf16 matrix work natively (not emulated)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if dev.type != "cpu":
        return False
    try:  # oneDNN's own check (AVX512-BF16 / AMX); falls back to the kernel's CPU flags
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        pass
    return bool(_cpu_flags() & set(_CPU_BF16_FLAGS))


def resolve_precision(requested: str, device="cpu", *, stream=None) -> str:
    """``"fp32"`` or ``"bf16"`` for a ``--precision`` value on ``device``.

    ``auto``: bf16 when ``native_bf16(device)``, else fp32. ``bf16`` without native support:
    bf16 all the same, after one line on ``stream`` (stderr) saying it will be slow.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return "fp32"
    native = native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if not native:
        print(f"svl-drl: warning: --precision bf16 on {torch.device(device)}, which has no native bf16 support "
              "(AVX512-BF16/AMX or a bf16 GPU): it runs emulated, slower than fp32", file=stream or sys.stderr)
    return "bf16"


def autocast(precision: str, device="cpu"):
    """The context the network's forward passes run in: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16' once resolved, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
