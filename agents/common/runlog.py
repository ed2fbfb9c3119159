"""What every training run writes while it runs: ``metrics.csv``, TensorBoard scalars, ``config.json``.

One implementation for every trainer (vA3C, SB3, RLlib, the staged pipeline), so a run folder
looks the same whoever wrote it. Crash safety: a new log appears whole or not at all (atomic
header), rows are appended and flushed one by one (a kill can tear only the last line), and a
resumed log is rebuilt atomically from the rows before the resumed step.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

from agents.common.checkpoint import atomic_write


class MetricsCSV:
    """Append-only ``metrics.csv`` with fixed columns ``fields`` (extra keys are ignored).

    ``keep_below``: resume -- keep only the rows of ``source`` (default: ``path``) whose
    ``step_key`` is below it (a row torn by a kill is dropped too); ``append``: keep the whole
    existing file. Neither: start a fresh file. Floats are written with 6 significant digits,
    None as an empty cell.
    """

    def __init__(self, path, fields: Sequence[str], *, step_key: str = "update", keep_below: int | None = None,
                 source=None, append: bool = False):
        self.path = Path(path)
        self.fields = tuple(fields)
        if append and keep_below is None and self.path.is_file():
            pass  # the existing file (and its header) is kept as it is
        else:
            rows = self._rows_before(Path(source) if source is not None else self.path, step_key, keep_below)

            def write(tmp):
                with open(tmp, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                    w.writeheader()
                    w.writerows(rows)

            atomic_write(self.path, write)
        self.fh = open(self.path, "a", newline="")
        self.w = csv.DictWriter(self.fh, fieldnames=self.fields, extrasaction="ignore")

    @staticmethod
    def _rows_before(source: Path, step_key: str, keep_below: int | None) -> list[dict]:
        if keep_below is None or not source.is_file():
            return []
        with open(source, newline="") as fh:
            # a row torn by a kill has missing (None) fields: dropped with the rows after the checkpoint
            return [r for r in csv.DictReader(fh) if r.get(step_key) and r[step_key].isdigit()
                    and int(r[step_key]) < keep_below and None not in r and None not in r.values()]

    def __call__(self, row: dict) -> None:
        self.w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class TensorBoardLog:
    """Every finite number of a metrics row as the scalar ``{prefix}/{key}`` at step ``row[step_key]``."""

    def __init__(self, log_dir, *, prefix: str, step_key: str = "update", skip: Sequence[str] = (),
                 purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.prefix, self.step_key = prefix, step_key
        self.skip = {step_key, *skip}

    def __call__(self, row: dict) -> None:
        step = int(row[self.step_key])
        for k, v in row.items():
            if k not in self.skip and isinstance(v, (int, float)) and math.isfinite(v):
                self.w.add_scalar(f"{self.prefix}/{k}", v, step)

    def close(self) -> None:
        self.w.close()


def jsonable(obj):
    """``obj`` with tuples as lists, dict keys as strings and anything else non-JSON as ``str``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path, obj, *, indent: int = 2) -> Path:
    """``obj`` as JSON at ``path``, replaced atomically (``jsonable`` applied)."""
    text = json.dumps(jsonable(obj), indent=indent)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
