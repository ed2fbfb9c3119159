"""Saving and loading the staged model (``agents.common.checkpoint`` format: tensors + JSON, atomic,
read back with ``torch.load(weights_only=True)``).

A pipeline output folder holds ``model.pt``: checkpoint kind ``"staged"``, config = the model
config (``StagedNet.config``), meta = what inference needs (intensity ``modality``, the
sliding ``window``, ``label_value``) plus the method and seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agents.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agents.staged.model import DEFAULT_MODEL, StagedNet

KIND = "staged"
MODEL_FILE = "model.pt"

__all__ = ["KIND", "MODEL_FILE", "save_model", "load_model", "resolve_model_path"]


def save_model(path, model: StagedNet, meta: dict | None = None) -> Path:
    """Write ``model`` (all decoders) to ``path`` atomically."""
    return save_checkpoint(path, KIND, dict(model.config), {"model": model.state_dict()}, meta or {})


def resolve_model_path(path) -> Path:
    """A pipeline output folder (its ``model.pt``) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        f = p / MODEL_FILE
        if not f.is_file():
            raise FileNotFoundError(f"no {MODEL_FILE} in {p} (expected the output folder of 'svl-drl pipeline')")
        return f
    if not p.exists():
        raise FileNotFoundError(f"model not found: {p}")
    return p


def load_model(path, device="cpu") -> tuple[StagedNet, dict]:
    """(model in eval mode on ``device``, meta) from a folder or file; one-line errors."""
    f = resolve_model_path(path)
    ck = load_checkpoint(f, KIND)
    cfg = ck["config"]
    unknown = set(cfg) - set(DEFAULT_MODEL) - {"agents"}
    if unknown:
        raise CheckpointError(f"{f}: unknown model option(s) {sorted(unknown)} (written by a newer version?)")
    try:
        model = StagedNet(**cfg)
        model.load_state_dict(ck["tensors"]["model"])
    except (KeyError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{f}: checkpoint does not match the staged model ({first[:160]})") from None
    model.to(torch.device(device)).eval()
    return model, ck["meta"]
