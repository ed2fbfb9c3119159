"""The leaderboard: per-policy means and 95 % confidence intervals computed from ``per_case.csv``,
written as CSV and Markdown."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from agents.common.checkpoint import atomic_write
from agents.eval import episodes as E

#: leaderboard metrics: (per-case field, column title, higher is better?)
METRICS = (("dice", "Dice", True), ("iou", "IoU", True), ("hd95", "HD95 (mm)", False),
           ("continuity", "continuity", False), ("dice_gain", "Dice gain", True), ("seconds", "s / episode", False))

def leaderboard_from_per_case(path, confidence: float = 0.95) -> list[dict]:
    """Leaderboard rows from a per-case CSV: one dict per policy, best Dice first.

    Each row: ``policy``, ``n`` (episodes), ``rank``, and for every metric in ``METRICS``
    ``<m>_mean``, ``<m>_ci95`` (half-width of the ``confidence`` interval, Student t) and
    ``<m>_n`` (cases where it is defined: HD95 is undefined when one mask is empty).
    """
    records = E.read_per_case_csv(path)
    if not records:
        raise ValueError(f"{path}: no per-case rows")
    rows = []
    for pol in dict.fromkeys(r["policy"] for r in records):
        sel = [r for r in records if r["policy"] == pol]
        row = {"policy": pol, "n": len(sel)}
        for field, _, _ in METRICS:
            vals = [r[field] for r in sel]
            m, h = E.mean_ci(vals, confidence)
            row[f"{field}_mean"], row[f"{field}_ci95"] = m, h
            row[f"{field}_n"] = int(sum(1 for v in vals if not math.isnan(v)))
        rows.append(row)
    rows.sort(key=lambda r: -np.nan_to_num(r["dice_mean"], nan=-1.0))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def write_leaderboard(rows: list[dict], out_dir, *, title: str = "Leaderboard",
                      notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """``leaderboard.csv`` and ``leaderboard.md`` in ``out_dir`` from ``leaderboard_from_per_case`` rows."""
    out_dir = Path(out_dir)
    fields = ["rank", "policy", "n"] + [f"{f}_{s}" for f, _, _ in METRICS for s in ("mean", "ci95", "n")]

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows({k: r[k] for k in fields} for r in rows)

    csv_path = atomic_write(out_dir / "leaderboard.csv", write_csv)
    md_path = atomic_write(out_dir / "leaderboard.md",
                           lambda tmp: Path(tmp).write_text(leaderboard_markdown(rows, title=title, notes=notes)))
    return csv_path, md_path


def _fmt(m: float, h: float, digits: int) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" if math.isnan(h) else f"{m:.{digits}f} ± {h:.{digits}f}"


def leaderboard_markdown(rows: list[dict], *, title: str = "Leaderboard", notes: Sequence[str] = ()) -> str:
    """A Markdown table (mean ± 95% CI) of leaderboard rows."""
    digits = {"dice": 3, "iou": 3, "hd95": 2, "continuity": 3, "dice_gain": 3, "seconds": 3}
    head = ["#", "policy"] + [t + (" ↑" if up else " ↓") for _, t, up in METRICS] + ["n"]
    rule = "|" + "|".join(["---:", ":---"] + ["---:"] * (len(head) - 2)) + "|"
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", rule]
    undefined = []
    for r in rows:
        cells = [str(r["rank"]), r["policy"]]
        for f, _, _ in METRICS:
            cell = _fmt(r[f"{f}_mean"], r[f"{f}_ci95"], digits[f])
            if r[f"{f}_n"] < r["n"]:
                cell += f" ({r[f'{f}_n']}/{r['n']})"
                undefined.append(f)
            cells.append(cell)
        cells.append(str(r["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± half-width of the 95% confidence interval (Student t) over episodes; "
                 "every policy ran on the same seeded episodes. Dice, IoU, HD95 against the truth; "
                 "continuity = C(f) of the reward (lower = fewer fragments, smoother surface); "
                 "Dice gain = Dice minus the annotation's Dice; s / episode = wall time of acting and stepping.")
    if undefined:
        lines.append("(k/n): the metric is defined on k of n episodes only (HD95 needs both masks non-empty).")
    lines += [f"{n}" for n in notes]
    return "\n".join(lines) + "\n"
