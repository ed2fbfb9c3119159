"""Statistics over training seeds, computed with rliable (Agarwal et al., 2021): the interquartile
mean (IQM) and the mean of Dice with stratified-bootstrap 95 % CIs, the probability of
improvement of each policy over its control, and performance profiles.

A policy's scores are a (runs, episodes) matrix of per-case Dice: the rows are its training
runs (one for a heuristic, a given checkpoint or a custom policy), the columns the benchmark's
seeded episodes, which play rliable's "tasks". Every policy runs the same episodes, so the
columns line up across policies, as rliable's probability of improvement requires.

Choices, and why:

- IQM and mean CIs resample runs within each episode *and* the episodes themselves
  (rliable's ``task_bootstrap=True``): the episodes are a random draw of the env's volumes and
  noise, not a fixed suite of tasks, and a heuristic has a single run, whose runs-only
  bootstrap would give an interval of zero width.
- P(improvement) is rliable's ``probability_of_improvement`` (per episode, the Mann-Whitney
  P(X > Y) between the two policies' runs, ties counted half; averaged over episodes). Its CI is
  rliable's ``StratifiedIndependentBootstrap``, which resamples each side's runs within every
  episode; with one run on both sides there is nothing to resample and the CI is reported as
  n/a instead of a zero-width interval.
- Bootstraps are seeded: rliable draws its indices from NumPy's global generator, which is
  seeded with ``seed`` for each policy (and restored afterwards), so the files are
  reproducible and a policy's intervals do not depend on which other policies were run.

Files (``write_stats``): ``stats.csv`` (``STATS_FIELDS``), ``stats.md``, ``performance_profile.png``.
"""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from agents.common.checkpoint import atomic_write

#: bootstrap replications of every interval (rliable's performance-profile default)
DEFAULT_REPS = 2000
#: NumPy seed of every bootstrap: the same per-case file gives the same intervals
BOOTSTRAP_SEED = 0
#: thresholds of the performance profile: Dice 0..1 in steps of 0.01
TAUS = np.linspace(0.0, 1.0, 101)
#: the control used when a policy's own control is not among the benchmarked policies
DEFAULT_CONTROL = "identity"
STATS_FIELDS = ("policy", "runs", "episodes", "iqm", "iqm_ci_low", "iqm_ci_high", "mean", "mean_ci_low",
                "mean_ci_high", "control", "p_improvement", "p_ci_low", "p_ci_high", "control_note")


@contextlib.contextmanager
def _seeded(seed: int):
    """NumPy's global generator seeded with ``seed`` inside, restored after (rliable samples from it)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def score_matrices(records: Sequence[dict], metric: str = "dice") -> dict[str, np.ndarray]:
    """{policy: (runs, episodes) float array} from per-case records (``read_per_case_csv``).

    Records without a ``run`` field count as run 0. Rows are the policy's runs in increasing
    order, columns its episodes in increasing order; every run must cover the same episodes.
    """
    cells: dict[str, dict[tuple[int, int], float]] = {}
    for r in records:
        cells.setdefault(r["policy"], {})[(int(r.get("run", 0)), int(r["episode"]))] = float(r[metric])
    out = {}
    for pol, c in cells.items():
        runs = sorted({k for k, _ in c})
        eps = sorted({e for _, e in c})
        missing = [(k, e) for k in runs for e in eps if (k, e) not in c]
        if missing:
            raise ValueError(f"{pol}: run {missing[0][0]} has no score for episode {missing[0][1]} "
                             "(every run of a policy must cover the same episodes)")
        out[pol] = np.array([[c[(k, e)] for e in eps] for k in runs], dtype=np.float64)
    return out


def _iqm_and_mean(x: np.ndarray) -> np.ndarray:
    from rliable import metrics

    return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from rliable import metrics

    return np.array([metrics.probability_of_improvement(x, y)])


def _fraction_above(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of all (run, episode) scores above each tau: rliable's ``score_distributions``,
    vectorised (rliable's loops over taus in Python, ~10x slower inside the bootstrap)."""
    return (np.asarray(scores).reshape(-1, 1) > np.asarray(taus).reshape(1, -1)).mean(axis=0)


def resolve_controls(policies: Sequence[str], controls: Mapping[str, str] | None = None,
                     default: str = DEFAULT_CONTROL) -> dict[str, tuple[str | None, str]]:
    """{policy: (control or None, note)}: the requested control when it was benchmarked, else
    ``default`` (identity) with a note saying so; ``default`` itself has no control."""
    out = {}
    present = set(policies)
    for p in policies:
        want = (controls or {}).get(p, default)
        if p == default and want == default:
            out[p] = (None, "")
        elif want in present and want != p:
            out[p] = (want, "")
        elif default in present and p != default:
            out[p] = (default, f"control {want} not in this run: {default} instead")
        else:
            out[p] = (None, f"control {want} not in this run")
    return out


def compute_stats(scores: Mapping[str, np.ndarray], controls: Mapping[str, str] | None = None, *,
                  reps: int = DEFAULT_REPS, seed: int = BOOTSTRAP_SEED, confidence: float = 0.95,
                  default_control: str = DEFAULT_CONTROL) -> list[dict]:
    """One row per policy (``STATS_FIELDS``), best IQM first.

    Args:
        scores: {policy: (runs, episodes)} Dice (``score_matrices``).
        controls: {policy: the policy it is compared with}; missing or absent -> ``default_control``.
        reps: bootstrap replications; seed: NumPy seed of each bootstrap.
    """
    from rliable import library as rly

    if not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps must be a positive int, got {reps!r}")
    scores = {p: np.asarray(s, dtype=np.float64) for p, s in scores.items()}
    for p, s in scores.items():
        if s.ndim != 2 or s.size == 0:
            raise ValueError(f"{p}: scores must be a non-empty (runs, episodes) matrix, got shape {s.shape}")
    chosen = resolve_controls(list(scores), controls, default_control)
    rows = []
    for p, s in scores.items():
        with _seeded(seed):
            point, ci = rly.get_interval_estimates({p: s}, _iqm_and_mean, task_bootstrap=True, reps=reps,
                                                   confidence_interval_size=confidence)
        (iqm, mean), (lo, hi) = point[p], ci[p]
        row = {"policy": p, "runs": s.shape[0], "episodes": s.shape[1], "iqm": float(iqm),
               "iqm_ci_low": float(lo[0]), "iqm_ci_high": float(hi[0]), "mean": float(mean),
               "mean_ci_low": float(lo[1]), "mean_ci_high": float(hi[1]), "control": "",
               "p_improvement": math.nan, "p_ci_low": math.nan, "p_ci_high": math.nan,
               "control_note": chosen[p][1]}
        ctrl = chosen[p][0]
        if ctrl is not None:
            c = scores[ctrl]
            if c.shape[1] != s.shape[1]:
                raise ValueError(f"P(improvement) needs the same episodes: {p} has {s.shape[1]}, "
                                 f"its control {ctrl} {c.shape[1]}")
            row["control"] = ctrl
            if s.shape[0] == 1 and c.shape[0] == 1:  # no runs to resample: the point only
                row["p_improvement"] = float(_improvement(s, c)[0])
            else:
                with _seeded(seed):
                    pp, pci = rly.get_interval_estimates({p: (s, c)}, _improvement, reps=reps,
                                                         confidence_interval_size=confidence)
                row["p_improvement"] = float(pp[p][0])
                row["p_ci_low"], row["p_ci_high"] = float(pci[p][0][0]), float(pci[p][1][0])
        rows.append(row)
    rows.sort(key=lambda r: -r["iqm"])
    return rows


def performance_profiles(scores: Mapping[str, np.ndarray], taus=TAUS, *, reps: int = DEFAULT_REPS,
                         seed: int = BOOTSTRAP_SEED) -> tuple[dict, dict]:
    """rliable score distributions: ({policy: (len(taus),) fraction of runs x episodes with Dice
    > tau}, {policy: (2, len(taus)) 95 % CI}), runs and episodes resampled."""
    from rliable import library as rly

    taus = np.asarray(taus, dtype=np.float64)
    profiles, cis = {}, {}
    for p, s in scores.items():
        with _seeded(seed):
            prof, ci = rly.create_performance_profile({p: np.asarray(s, dtype=np.float64)}, taus,
                                                      custom_profile_func=_fraction_above, task_bootstrap=True,
                                                      reps=reps)
        profiles[p], cis[p] = prof[p], ci[p]
    return profiles, cis


def plot_performance_profile(profiles: Mapping[str, np.ndarray], cis: Mapping[str, np.ndarray], path,
                             taus=TAUS, runs: Mapping[str, int] | None = None) -> Path:
    """``performance_profile.png``: rliable's plot of the profiles and their CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    label = {p: (f"{p} ({runs[p]} runs)" if runs and runs.get(p, 1) > 1 else p) for p in profiles}
    fig, ax = plt.subplots(figsize=(8, 5))
    plot_utils.plot_performance_profiles({label[p]: v for p, v in profiles.items()}, np.asarray(taus),
                                         performance_profile_cis={label[p]: v for p, v in cis.items()}, ax=ax,
                                         xlabel=r"Dice threshold $\tau$",
                                         ylabel=r"fraction of runs $\times$ episodes with Dice $> \tau$",
                                         labelsize="medium", ticklabelsize="medium", legend=True,
                                         legendsize="small")
    ax.set_title("Performance profiles (95 % stratified-bootstrap CIs)", fontsize="medium")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _ci(lo: float, hi: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(lo) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def stats_markdown(rows: Sequence[dict], *, title: str = "Statistics over training runs",
                   reps: int = DEFAULT_REPS, notes: Sequence[str] = ()) -> str:
    """A Markdown table of ``compute_stats`` rows."""
    head = ["policy", "runs", "episodes", "Dice IQM [95 % CI]", "Dice mean [95 % CI]", "control",
            "P(> control) [95 % CI]"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":---", "---:", "---:", "---:", "---:", ":---", "---:"]) + "|"]
    for r in rows:
        if r["control"]:
            ctrl = r["control"] + (f" ({r['control_note']})" if r["control_note"] else "")
            p = f"{r['p_improvement']:.2f} {_ci(r['p_ci_low'], r['p_ci_high'], 2)}"
        else:
            ctrl, p = (r["control_note"] or "—"), "—"
        lines.append(f"| {r['policy']} | {r['runs']} | {r['episodes']} | {r['iqm']:.3f} "
                     f"{_ci(r['iqm_ci_low'], r['iqm_ci_high'])} | {r['mean']:.3f} "
                     f"{_ci(r['mean_ci_low'], r['mean_ci_high'])} | {ctrl} | {p} |")
    lines += ["", "IQM: the mean of the middle 50 % of all runs × episodes Dice scores (robust to a few failed runs "
              "or episodes). CIs: rliable's stratified bootstrap over runs and episodes "
              f"({reps} resamples, seeded). P(> control): rliable's probability of improvement, the chance that a "
              "run of the policy scores above a run of its control on the same episode (ties count half), averaged "
              "over episodes; 0.5 = no difference. Its CI resamples runs only: n/a when both have one run. "
              "Controls (`AgentSpec.control`, agents/registry.py): vA3C against `supervised` (its own network "
              "trained with the Warmup loss only), a warm-start row against the checkpoint it was fine-tuned from, "
              "every other policy against identity (the annotation unchanged)."]
    lines += list(notes)
    return "\n".join(lines) + "\n"


def write_stats(records_or_path, out_dir, controls: Mapping[str, str] | None = None, *, reps: int = DEFAULT_REPS,
                seed: int = BOOTSTRAP_SEED, title: str = "Statistics over training runs",
                notes: Sequence[str] = ()) -> dict:
    """``stats.csv``, ``stats.md`` and ``performance_profile.png`` in ``out_dir`` from per-case
    records or a ``per_case.csv`` path. Returns {"rows", "stats_csv", "stats_md", "profile_png"}."""
    from agents.eval import episodes as E

    records = (E.read_per_case_csv(records_or_path) if isinstance(records_or_path, (str, Path))
               else list(records_or_path))
    scores = score_matrices(records)
    if not scores:
        raise ValueError("no per-case rows to compute statistics from")
    rows = compute_stats(scores, controls, reps=reps, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=STATS_FIELDS)
            w.writeheader()
            w.writerows(rows)

    csv_path = atomic_write(out_dir / "stats.csv", write_csv)
    md = stats_markdown(rows, title=title, reps=reps, notes=notes)
    md_path = atomic_write(out_dir / "stats.md", lambda tmp: Path(tmp).write_text(md))
    order = [r["policy"] for r in rows]
    profiles, cis = performance_profiles({p: scores[p] for p in order}, reps=reps, seed=seed)
    png = plot_performance_profile(profiles, cis, out_dir / "performance_profile.png",
                                   runs={p: scores[p].shape[0] for p in order})
    return {"rows": rows, "stats_csv": csv_path, "stats_md": md_path, "profile_png": png}
