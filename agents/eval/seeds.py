"""The benchmark's training runs over seeds: which (agent, seed) runs to train, where their run
folders go, training them here or in a process pool, what ``benchmark.json`` and the
leaderboard's notes say about them, and each policy's control for the statistics.

With ``seeds=N`` every learned agent trained by the benchmark is trained N times, run k on the
training seed ``base_seed + k``: run 0 is the single-seed benchmark's run (same seed, same
folder ``runs/<agent>``), so ``seeds=1`` trains exactly what it always did; with N > 1 the
folders are ``runs/<agent>/seed<k>``. This module knows nothing of how an agent trains: the
benchmark hands it the functions (``train_runs``), which keeps the import graph one-way.
"""

from __future__ import annotations

import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from agents import registry
from agents.heuristics import HEURISTICS, make_heuristic


@dataclass(frozen=True)
class TrainRun:
    """One training run of a learned agent: run ``index`` (0..seeds-1) on training seed ``seed``."""

    agent: str
    index: int
    seed: int
    folder: Path


def check_seeds(seeds) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral) or seeds < 1:
        raise ValueError(f"seeds must be a positive int (training runs per learned agent), got {seeds!r}")
    return int(seeds)


def plan_runs(agents: Sequence[str], base_seed: int, seeds: int, out) -> list[TrainRun]:
    """The runs to train, agent by agent: seeds ``base_seed + k``, k = 0..seeds-1; folders
    ``out/runs/<agent>`` for one seed, ``out/runs/<agent>/seed<k>`` for more."""
    seeds = check_seeds(seeds)
    root = Path(out) / "runs"
    return [TrainRun(a, k, base_seed + k, root / a if seeds == 1 else root / a / f"seed{k}")
            for a in agents for k in range(seeds)]


def train_runs(runs: Sequence[TrainRun], *, train: Callable[[TrainRun], Any],
               job: Callable[..., tuple[str, float]], job_args: Callable[[TrainRun], tuple],
               load: Callable[[TrainRun, str], Any], jobs: int = 1,
               progress: bool = True) -> dict[TrainRun, tuple[Any, float]]:
    """Train every run -> {run: (policy, wall minutes it took)}.

    ``jobs`` > 1 (and more than one run): all runs go to one pool of ``jobs`` spawned
    processes, each with ``cores // jobs`` torch threads; ``job(*job_args(run), threads)``
    trains in the worker and returns (policy file, minutes), and ``load(run, file)`` reads the
    policy back here. Otherwise ``train(run)`` trains each in this process, one after another.
    """
    if jobs > 1 and len(runs) > 1:
        return train_in_pool(runs, job, job_args, load, jobs=min(jobs, len(runs)), progress=progress)
    out = {}
    for r in runs:
        t0 = time.perf_counter()
        pol = train(r)
        out[r] = (pol, (time.perf_counter() - t0) / 60)
    return out


def train_in_pool(runs: Sequence[TrainRun], job: Callable[..., tuple[str, float]],
                  job_args: Callable[[TrainRun], tuple], load: Callable[[TrainRun, str], Any], *, jobs: int,
                  progress: bool = True) -> dict[TrainRun, tuple[Any, float]]:
    """``runs`` trained in ``jobs`` processes at once (see ``train_runs``).

    Fair only with CPU-time budgets: each run then gets the same compute, however the
    processes share the cores.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    threads = max(1, (os.cpu_count() or 2) // jobs)
    # spawn: a forked child would inherit torch's thread pools and this process's locks
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {r: pool.submit(job, *job_args(r), threads) for r in runs}
        files = {}
        for r in tqdm(list(futures), desc=f"training ({jobs} at once)", unit="run", disable=not progress):
            files[r] = futures[r].result()
    return {r: (load(r, path), minutes) for r, (path, minutes) in files.items()}


def trained_alongside(runs: Sequence[TrainRun], jobs: int) -> int:
    """How many other runs trained at the same time as each of ``runs`` (``training_record``'s
    ``alongside``): all of them share one pool when ``jobs`` > 1 (``train_runs``)."""
    return len(runs) - 1 if jobs > 1 and len(runs) > 1 else 0


def training_record(runs: Sequence[TrainRun], trained: Mapping[TrainRun, tuple[Any, float]], budget: float,
                    clock: str, alongside: int = 0) -> dict:
    """``benchmark.json``'s ``training`` entry of one agent. One run: {"minutes_budget", "clock",
    "minutes_used", "run"} (+ "trained_alongside" when others trained at the same time), as
    single-seed benchmarks always wrote; more: "seeds", "runs" and "minutes_used" as lists."""
    rec: dict = {"minutes_budget": budget, "clock": clock}
    if len(runs) == 1:
        rec.update(minutes_used=round(trained[runs[0]][1], 2), run=str(runs[0].folder))
    else:
        rec.update(seeds=[r.seed for r in runs], minutes_used=[round(trained[r][1], 2) for r in runs],
                   runs=[str(r.folder) for r in runs])
    if alongside:
        rec["trained_alongside"] = alongside
    return rec


def training_note(name: str, t: dict) -> str:
    """The leaderboard's note on an agent trained over several seeds (``training_record``)."""
    unit = "CPU-min" if t.get("clock") == "cpu" else "min"
    alongside = f", in parallel with {t['trained_alongside']} other(s)" if t.get("trained_alongside") else ""
    used = ", ".join(f"{m:g}" for m in t["minutes_used"])
    seeds = t["seeds"]
    init = t.get("init_from")  # a warm-start row: one checkpoint, or run k's the k-th of a list
    if isinstance(init, list):
        init = f", run k fine-tuned from {Path(init[0]).parent.parent}/seed<k>/{Path(init[0]).name}"
    elif init:
        init = f", fine-tuned from {init}"
    return (f"{name}: {len(seeds)} training runs, seeds {seeds[0]}..{seeds[-1]}, each with a budget of "
            f"{t['minutes_budget']:g} {unit}{alongside}{init or ''} (took {used} min wall), runs in "
            f"{Path(t['runs'][0]).parent}/seed*; its row pools runs × episodes.")


def control_names(agents: Sequence[str], names: Mapping[str, str]) -> dict[str, str]:
    """{policy name: its control's policy name} for the learned agents among ``agents``.

    ``names`` maps the benchmarked agents to their policy names (registry labels, heuristic
    names). A control that was not benchmarked is still named (its label), so that the
    statistics can say it is missing before falling back to identity.
    """
    learned = set(registry.agent_names())
    out = {}
    for a in agents:
        if a not in learned or a not in names:
            continue
        c = registry.get_agent(a).control
        if c in names:
            out[names[a]] = names[c]
        elif c in learned:
            out[names[a]] = registry.get_agent(c).label
        elif c in HEURISTICS:
            out[names[a]] = str(getattr(make_heuristic(c), "name", c))
        else:
            out[names[a]] = c
    return out
