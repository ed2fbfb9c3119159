"""Checkpoint files: tensors + a JSON config, loaded without executing code from the file.

A checkpoint is ``torch.save`` of a plain dict::

    {"format": "svl-drl-checkpoint", "format_version": 1, "kind": "va3c",
     "config": "<json>", "tensors": {name: {param: Tensor}}, "meta": "<json>"}

and is read back with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain containers -- a stranger's checkpoint cannot run code. Writes are atomic
(temporary file in the target folder, then ``os.replace``) so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "svl-drl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of another format/version, or of another agent kind."""


def atomic_write(path: Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_checkpoint(path, kind: str, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                    meta: dict | None = None) -> Path:
    """Write a checkpoint atomically. ``tensors``: named state dicts (model, optimizer tensors...).

    ``config`` must be JSON-serialisable: it is what rebuilds the agent. ``meta`` (JSON) holds
    anything else small: step counters, RNG states as lists, metrics.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": json.dumps(config),
        "meta": json.dumps(meta or {}),
        "tensors": {k: {n: t.detach().cpu() for n, t in sd.items()} for k, sd in tensors.items()},
    }
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path, kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read and validate a checkpoint. Returns {"kind", "config", "meta", "tensors"}.

    Raises FileNotFoundError if missing and CheckpointError (a ValueError) for anything else
    wrong, always naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled code, not a torch file...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable svl-drl checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an svl-drl checkpoint (missing format marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('format_version')} "
                              f"is not supported (expected {FORMAT_VERSION})")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and payload.get("kind") not in kinds:
        raise CheckpointError(f"{path}: checkpoint is of agent kind {payload.get('kind')!r}, expected {' or '.join(kinds)}")
    try:
        config, meta = json.loads(payload["config"]), json.loads(payload["meta"])
        tensors = payload["tensors"]
        if not isinstance(tensors, dict):
            raise TypeError("tensors is not a dict")
    except Exception as exc:
        raise CheckpointError(f"{path}: malformed checkpoint ({exc})") from None
    return {"kind": payload["kind"], "config": config, "meta": meta, "tensors": tensors}
