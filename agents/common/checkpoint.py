"""Checkpoint files: tensors + a JSON config, loaded without executing code from the file.

A checkpoint is ``torch.save`` of a plain dict::

    {"format": "svl-drl-checkpoint", "format_version": 1, "kind": "va3c",
     "config": "<json>", "tensors": {name: {param: Tensor}}, "meta": "<json>"}

and is read back with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain containers -- a stranger's checkpoint cannot run code. Writes are atomic
(temporary file in the target folder, then ``os.replace``) so a crash never leaves a
half-written checkpoint under the final name.

Loading validates before it touches a model: the format marker and version, the agent kind,
the JSON config and meta, that every entry of ``tensors`` is a tensor, and -- through
:func:`load_state_dict_checked` -- that the weights have exactly the keys, shapes and dtypes
of the model the config builds, all finite. A checkpoint that fails any check raises
:class:`CheckpointError` naming the file and the problem; no model is ever half-loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from svl_env.files import chmod_like_new_file

FORMAT = "svl-drl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of another format/version, or of another agent kind."""


def atomic_write(path: Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic).

    The temporary file is ``.NAME.XXXX.tmp`` next to ``path``; it is flushed to disk
    (``fsync``) before the rename, so after a crash or power loss ``path`` holds either the
    old or the new content, never a mix. The file gets the mode ``open()`` would give it (0644
    under umask 022), not ``mkstemp``'s 0600. A process killed mid-write can leave the temporary
    file behind: :func:`remove_stale_temporaries` clears them (resume does).
    """
    path = Path(path)
    ensure_dir(path.parent)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; cannot write a file there")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(Path(tmp))
        chmod_like_new_file(tmp)  # mkstemp's 0600 would otherwise survive the rename
        try:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError:  # some filesystems cannot fsync; the rename is still atomic
            pass
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_dir_path(path, what: str = "output folder") -> Path:
    """Raise a clear NotADirectoryError if ``path`` or one of its parents is an existing file
    (checked before a long job, so it does not fail at its very end). Creates nothing."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{what} {path}: {p} is an existing file, not a folder")
    return path


def ensure_dir(path, what: str = "output folder") -> Path:
    """Create folder ``path`` (and parents) after :func:`check_dir_path`."""
    path = check_dir_path(path, what)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def all_or_nothing(out, what: str = "--out", prefix: str = ".staging-"):
    """Write a folder's files all or nothing: yields a hidden staging folder inside ``out``;
    when the block ends without error its files are moved into ``out`` (each move atomic: same
    file system). On any error (or Ctrl-C) the staging folder and the folders this call created
    are removed, so ``out`` is left as it was."""
    out = Path(out)
    created = [p for p in (out, *out.parents) if not p.exists()]
    ensure_dir(out, what)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    try:
        yield staging
        for p in sorted(staging.iterdir()):
            os.replace(p, out / p.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for d in created:  # deepest first, only if still empty
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    shutil.rmtree(staging, ignore_errors=True)


def resolve_checkpoint(path) -> Path:
    """A run folder -> its ``checkpoint.pt``; a file -> itself."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def run_folder(out, resume=None) -> Path:
    """The folder a training call writes: the resumed run's (``resume`` a run folder or a file in
    it) or ``out``. A ``resume`` that does not exist raises FileNotFoundError."""
    if resume is None:
        return Path(out)
    p = Path(resume)
    if not p.exists():
        raise FileNotFoundError(f"run to resume not found: {resume}")
    return p.parent if p.is_file() else p


def remove_stale_temporaries(folder, name: str) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files that :func:`atomic_write` left in ``folder`` when killed."""
    removed = []
    for p in Path(folder).glob(f".{name}.*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


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
        raise CheckpointError(f"{path}: not a readable svl-drl checkpoint ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an svl-drl checkpoint (missing format marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('format_version')} "
                              f"is not supported (expected {FORMAT_VERSION})")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and payload.get("kind") not in kinds:
        raise CheckpointError(f"{path}: checkpoint is of agent kind {payload.get('kind')!r}, "
                              f"expected {' or '.join(kinds)}")
    try:
        config, meta = json.loads(payload["config"]), json.loads(payload["meta"])
        if not isinstance(config, dict) or not isinstance(meta, dict):
            raise TypeError("config and meta must be JSON objects")
        tensors = payload["tensors"]
        if not isinstance(tensors, dict):
            raise TypeError("tensors is not a dict")
        for group, sd in tensors.items():
            if not isinstance(sd, dict):
                raise TypeError(f"tensors[{group!r}] is not a dict")
            for name, t in sd.items():
                if not torch.is_tensor(t):
                    raise TypeError(f"tensors[{group!r}][{name!r}] is a {type(t).__name__}, not a tensor")
    except Exception as exc:
        raise CheckpointError(f"{path}: malformed checkpoint ({_first_line(exc)})") from None
    return {"kind": payload["kind"], "config": config, "meta": meta, "tensors": tensors, "path": path}


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:limit]


def validate_state_dict(module: torch.nn.Module, sd: dict, where, what: str = "weights") -> None:
    """Check that ``sd`` fits ``module`` exactly (keys, shapes, dtypes, finite values) without
    loading anything; raise :class:`CheckpointError` naming ``where`` (the file) otherwise."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"unexpected {len(extra)} (e.g. {extra[0]!r})")
        raise CheckpointError(f"{where}: {what} do not match the model its config builds: {', '.join(parts)} entries")
    for k, ref in expected.items():
        t = sd[k]
        if not torch.is_tensor(t):
            raise CheckpointError(f"{where}: {what} entry {k!r} is not a tensor")
        if tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(f"{where}: {what} entry {k!r} has shape {tuple(t.shape)}, "
                                  f"the model needs {tuple(ref.shape)}")
        if t.dtype.is_floating_point != ref.dtype.is_floating_point:
            raise CheckpointError(f"{where}: {what} entry {k!r} has dtype {t.dtype}, the model needs {ref.dtype}")
        if t.dtype.is_floating_point and t.numel() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: {what} entry {k!r} contains NaN/Inf values")


def load_state_dict_checked(module: torch.nn.Module, sd: dict, where, what: str = "weights") -> None:
    """:func:`validate_state_dict`, then ``module.load_state_dict(sd)`` (all or nothing)."""
    validate_state_dict(module, sd, where, what)
    module.load_state_dict(sd)
