"""Mixed precision for every trainer: ``--precision {auto,fp32,bf16}``.

bf16 runs the network's matrix work (convolutions, matmuls) under ``torch.autocast`` in
bfloat16, on the CPU's matrix units (AMX, AVX512-BF16) or a GPU's tensor cores. Weights,
optimiser states, losses, advantages and log-probabilities stay float32: the trainers cast
network outputs to float32 (``.float()``) before any loss or distribution. GroupNorm's
statistics are float32 too: under CPU autocast it takes bf16 activations but accumulates its
mean and variance in float32 (PyTorch's mixed-type kernel) and only its output is bf16.
Checkpoints are therefore always float32 and load with either precision.

``auto`` is bf16 where the device has native bf16 support (detected, not assumed) and fp32
elsewhere. An explicit ``bf16`` on a device without native support still runs (emulated,
slower than fp32), after one line on stderr that says so.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")

#: CPU feature names (Linux /proc/cpuinfo) that make bf16 matrix work native: x86 AVX512-BF16 /
#: AMX, Arm's BF16 extension
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def _cpu_flags() -> set[str]:
    """The kernel's CPU feature names (x86 ``flags``, Arm ``Features``); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_native_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():  # oneDNN runs the bf16 convolutions on the CPU
        return False
    # oneDNN's check is necessary, not sufficient: it accepts any AVX512 core, where bf16 is emulated
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # cpuinfo: any OS, x86 only
    if probe is not None and probe():
        return True
    return bool(_cpu_flags() & set(_CPU_BF16_FLAGS))


def native_bf16(device="cpu") -> bool:
    """Whether ``device`` does bf16 matrix work natively (not emulated)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return dev.type == "cpu" and _cpu_native_bf16()


def resolve_precision(requested: str | None, device="cpu", *, stream=None, auto_bf16: bool = True) -> str:
    """``"fp32"`` or ``"bf16"`` for a ``--precision`` value (None = ``auto``) on ``device``.

    ``auto``: bf16 when ``native_bf16(device)`` (and ``auto_bf16``: a trainer measured to learn
    worse in bf16 passes False, so that only an explicit ``bf16`` gives bf16), else fp32.
    ``bf16`` without native support: bf16 all the same, after one line on ``stream`` (stderr)
    saying it will be slow.
    """
    requested = "auto" if requested is None else requested
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return "fp32"
    if requested == "auto":
        return "bf16" if auto_bf16 and native_bf16(device) else "fp32"
    native = native_bf16(device)
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


def add_precision_argument(p: argparse.ArgumentParser, resume_note: str = "") -> None:
    """``--precision {auto,fp32,bf16}`` (stored as None when not given: ``auto``)."""
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="network arithmetic: bf16 autocast (weights, losses and optimiser states stay fp32) "
                        "or fp32; auto (default): bf16 where the CPU/GPU has native bf16 support, else fp32"
                        + resume_note)
