"""The benchmark's warm-start track: which RL algorithm improves a pretrained refiner most?

``benchmark.run(..., track=...)`` / ``svl-drl benchmark --track ...``:

- ``"scratch"`` (default): every learned agent trains from its own initialisation, as always.
- ``"warm-start"``: one ``supervised`` checkpoint -- trained first for its budget, or given
  with ``checkpoints={"supervised": PATH}`` (``--checkpoint supervised=PATH``) -- is scored
  alone as the control row ``"supervised (checkpoint)"``; every other learned agent of the run
  fine-tunes from it (``init_from``, ``agents.common.init_from``) for its own budget, in
  ``OUT/warm-start/runs/<agent>``, and is scored as ``"<label> (warm start)"``. The heuristics
  are scored as usual; no learned agent trains from scratch.
- ``"both"``: the from-scratch rows and the warm-start rows in one leaderboard. When the
  ``supervised`` agent is among the from-scratch rows, its run is the checkpoint and its row
  the control (no second, identical row).

What each learned agent takes from the checkpoint (``svl-drl train --init-from`` does the same):
vA3C the network, and its Warmup stage is off, so the value and policy stages share the budget;
voxel-PPO the network; SB3 PPO/A2C the backbone config, backbone and policy head (not the
value head, whose shape differs: ``agents.sb3.warm_start``). Agents that cannot start from a
checkpoint (``AgentSpec.takes_init_from`` false, e.g. ``rllib-ppo``) are refused in these tracks.

``benchmark.json`` records ``track`` and, for the warm tracks, ``warm_start``: the checkpoint,
where it came from, the control row's label and the fine-tuned rows.

This module does not import ``agents.eval.benchmark`` (that would be an import cycle): the
benchmark passes itself (its trainers and budget parser) as ``bench``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from agents import registry
from agents.common.checkpoint import load_checkpoint, resolve_checkpoint
from agents.eval.seeds import plan_runs, training_record

__all__ = ["TRACKS", "SOURCE", "CONTROL_LABEL", "WarmStartPlan", "plan", "warm_label", "run_track"]

TRACKS = ("scratch", "warm-start", "both")
#: the agent whose checkpoint the warm rows start from
SOURCE = "supervised"
CONTROL_LABEL = "supervised (checkpoint)"
FOLDER = "warm-start"  # OUT/warm-start/runs/<agent>: the fine-tuned runs


def warm_label(name: str) -> str:
    return f"{registry.get_agent(name).label} (warm start)"


@dataclass
class WarmStartPlan:
    """What a track trains; made (and checked) before any training starts."""

    track: str
    scratch: list[str]  # the agents of the from-scratch rows (heuristics included)
    warm: list[str] = field(default_factory=list)  # learned agents that fine-tune from the checkpoint
    source: str = "train"  # the checkpoint: "given" (checkpoints[SOURCE]), "scratch row" or "train"
    checkpoint: str | None = None  # the given checkpoint
    budgets: dict = field(default_factory=dict)  # minutes of the warm agents (and of SOURCE when trained here)


def plan(agents, track: str, checkpoints: dict, train_minutes, bench: ModuleType,
         warm_minutes=None) -> WarmStartPlan:
    """Split ``agents`` into from-scratch rows and fine-tuned ones for ``track``; ValueError (one
    line) for a track that cannot run: an unknown track, an agent that cannot warm-start, a
    missing budget, or (warm-start track) a ``--checkpoint`` of another agent than ``supervised``.

    ``warm_minutes`` (one number or {agent: minutes}): the fine-tuning budgets; default the
    agents' ``train_minutes``. The checkpoint, when trained here, gets ``train_minutes``."""
    if track not in TRACKS:
        raise ValueError(f"track must be one of {', '.join(TRACKS)}, got {track!r}")
    agents = list(agents)
    if track == "scratch":
        return WarmStartPlan(track, agents)
    learned = set(registry.agent_names())
    warm = [a for a in agents if a in learned and a != SOURCE]
    cannot = [a for a in warm if not registry.get_agent(a).takes_init_from]
    if cannot:
        raise ValueError(f"{', '.join(cannot)} cannot start from a checkpoint (no init_from): drop it from the "
                         f"agents of the {track} track")
    if track == "warm-start":
        other = sorted(k for k in checkpoints if k != SOURCE)
        if other:
            raise ValueError(f"the warm-start track trains every learned agent from the {SOURCE} checkpoint; "
                             f"--checkpoint applies to {SOURCE} only there, got {', '.join(other)}")
    scratch = agents if track == "both" else [a for a in agents if a not in learned]
    if SOURCE in checkpoints:
        # a file of another agent is named now, not after the from-scratch rows have trained
        load_checkpoint(resolve_checkpoint(checkpoints[SOURCE]), registry.get_agent(SOURCE).kind)
        source = "given"
    elif track == "both" and SOURCE in agents:
        source = "scratch row"
    else:
        source = "train"
    budgets = bench._budgets(train_minutes if warm_minutes is None else warm_minutes, warm)
    if source == "train":
        budgets.update(bench._budgets(train_minutes, [SOURCE]))
    return WarmStartPlan(track, scratch, warm, source, checkpoints.get(SOURCE), budgets)


def _config(name: str, train_config: dict | None, precision: str | None) -> dict:
    cfg = dict((train_config or {}).get(name, {}))
    if registry.get_agent(name).takes_precision:
        cfg["precision"] = precision
    return cfg


def _rename(pol, label: str):
    try:
        pol.name = label
    except AttributeError:  # a read-only property: keep the policy's own name
        pass
    return pol


def run_track(p: WarmStartPlan, *, bench: ModuleType, env_kwargs: dict, seed: int, out: Path, progress: bool,
              workers: int, train_config: dict | None, precision: str | None, clock: str, train_jobs: int,
              device) -> tuple[list, dict, dict]:
    """Get the checkpoint (train it, or take the given one / the from-scratch row's), then
    fine-tune every warm agent from it. ``seed``: the training seed. Returns (the control row's
    policy if it is a row of its own, then the warm rows' policies; their ``training`` entries
    for benchmark.json and the notes; the ``warm_start`` record of benchmark.json)."""
    out = Path(out)
    policies, training = [], {}
    control = CONTROL_LABEL
    src_file = registry.get_agent(SOURCE).checkpoint
    if p.source == "given":
        ck = Path(p.checkpoint)
        if p.track == "both" and SOURCE in p.scratch:
            control = registry.get_agent(SOURCE).label  # that row is this checkpoint already
        else:
            policies.append(_rename(bench.load_learned(SOURCE, ck, device=device), CONTROL_LABEL))
            training[CONTROL_LABEL] = {"checkpoint": str(ck)}
    elif p.source == "scratch row":
        ck = out / "runs" / SOURCE
        control = registry.get_agent(SOURCE).label
    else:
        ck = out / "runs" / SOURCE
        t0 = time.perf_counter()
        pol = bench.train_learned(SOURCE, env_kwargs, p.budgets[SOURCE], seed, ck, progress, workers=workers,
                                  config=_config(SOURCE, train_config, precision), clock=clock)
        policies.append(_rename(pol, CONTROL_LABEL))
        training[CONTROL_LABEL] = {"minutes_budget": p.budgets[SOURCE], "clock": clock,
                                   "minutes_used": round((time.perf_counter() - t0) / 60, 2), "run": str(ck)}
    if ck.is_dir():
        ck = ck / src_file
    configs = {a: {**_config(a, train_config, precision), "init_from": str(ck)} for a in p.warm}
    runs = plan_runs(p.warm, seed, 1, out / FOLDER)
    trained = bench.train_runs(runs, env_kwargs, p.budgets, jobs=train_jobs, progress=progress, workers=workers,
                               train_config=configs, clock=clock, device=device)
    alongside = len(runs) - 1 if train_jobs > 1 and len(runs) > 1 else 0
    for r in runs:
        policies.append(_rename(trained[r][0], warm_label(r.agent)))
        training[warm_label(r.agent)] = {**training_record([r], trained, p.budgets[r.agent], clock, alongside),
                                         "init_from": str(ck)}
    meta = {"checkpoint": str(ck), "checkpoint_source": p.source, "control": control,
            "fine_tuned": {a: warm_label(a) for a in p.warm}}
    return policies, training, meta
