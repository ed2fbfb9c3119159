"""The benchmark's warm-start track: which RL algorithm improves a pretrained refiner most?

``benchmark.run(..., track=...)`` / ``svl-drl benchmark --track ...``:

- ``"scratch"`` (default): every learned agent trains from its own initialisation, as always.
- ``"warm-start"``: a ``supervised`` checkpoint -- trained first for its budget, or given
  with ``checkpoints={"supervised": PATH}`` (``--checkpoint supervised=PATH``) -- is scored
  alone as the control row ``"supervised (checkpoint)"``; every other learned agent of the run
  fine-tunes from it (``init_from``, ``agents.common.init_from``) for its own budget, in
  ``OUT/warm-start/runs/<agent>``, and is scored as ``"<label> (warm start)"``. The heuristics
  are scored as usual; no learned agent trains from scratch.
- ``"both"``: the from-scratch rows and the warm-start rows in one leaderboard. When the
  ``supervised`` agent is among the from-scratch rows, its run is the checkpoint and its row
  the control (no second, identical row).

When ``supervised`` is among the agents, it is "fine-tuned" too: trained on from the checkpoint
with its own loss for the same budget, as ``"supervised (...) (warm start)"``. That row is the
warm RL rows' control at equal compute in the statistics (P(improvement)), since more training
of any kind can improve the checkpoint; it is compared with the checkpoint itself. Without it,
every warm row is compared with the checkpoint.

Over training seeds (``seeds=N``, ``--seeds N``): the checkpoint is trained N times, run k on
training seed ``base + k`` in ``OUT/runs/supervised/seed<k>`` (with "both" and ``supervised``
among the from-scratch rows, its N runs are the checkpoints: nothing more is trained), so the
control row has N runs; every warm agent is fine-tuned N times, run k from checkpoint k on
training seed ``base + k``, in ``OUT/warm-start/runs/<agent>/seed<k>``, and per_case.csv's
``run`` column gives its run k, so the statistics pool runs × episodes. A checkpoint given with
``--checkpoint supervised=PATH`` is the one start of all N warm runs (and the control, one run).
One seed trains and writes exactly what it always did (``agents.eval.seeds``).

What each learned agent takes from the checkpoint (``svl-drl train --init-from`` does the same):
vA3C the network, and its Warmup stage is off, so the value and policy stages share the budget;
voxel-PPO the network; SB3 PPO/A2C the backbone config, backbone and policy head (not the
value head, whose shape differs: ``agents.sb3.warm_start``). Agents that cannot start from a
checkpoint (``AgentSpec.takes_init_from`` false, e.g. ``rllib-ppo``) are refused in these tracks.

``benchmark.json`` records ``track`` and, for the warm tracks, ``warm_start``: the checkpoint
(the list of them, run k's the k-th, when there are several), where it came from, the control
row's label and the fine-tuned rows; each warm row's ``training`` entry has its ``init_from``
(likewise) and, over seeds, the ``seeds``, ``runs`` and ``minutes_used`` lists of
``agents.eval.seeds.training_record``.

This module does not import ``agents.eval.benchmark`` (that would be an import cycle): the
benchmark passes itself (its trainers and budget parser) as ``bench``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from agents import registry
from agents.common.checkpoint import load_checkpoint, resolve_checkpoint
from agents.eval.seeds import plan_runs, trained_alongside, training_record

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
    # SOURCE among the agents: it is fine-tuned too, i.e. trained on with its own loss for the
    # same budget -- the warm rows' control at equal compute (``run_track``)
    warm = [a for a in agents if a in learned]
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


def _checkpoint_file(path: Path) -> Path:
    """A run folder -> the checkpoint file in it; a file as it is."""
    return path / registry.get_agent(SOURCE).checkpoint if path.is_dir() else path


def _one_or_all(paths: list[Path]):
    """benchmark.json's form of checkpoints: the path when there is one, else the list."""
    return str(paths[0]) if len(paths) == 1 else [str(c) for c in paths]


def run_track(p: WarmStartPlan, *, bench: ModuleType, env_kwargs: dict, seed: int, out: Path, progress: bool,
              workers: int, train_config: dict | None, precision: str | None, clock: str, train_jobs: int,
              device, seeds: int = 1) -> tuple[list, dict, dict]:
    """Get the checkpoints (train ``seeds`` of them, or take the given one / the from-scratch
    row's runs), then fine-tune every warm agent ``seeds`` times, run k from checkpoint k (from
    the given one when there is one) on training seed ``seed + k``. ``seed``: the base training
    seed. Returns (the (policy, training run) pairs of the control row's runs if it is a row of
    its own, then of the warm rows' runs; their ``training`` entries for benchmark.json and the
    notes; the ``warm_start`` record of benchmark.json)."""
    out = Path(out)
    policies, training = [], {}
    control = CONTROL_LABEL
    own_row = p.track == "both" and SOURCE in p.scratch  # the from-scratch supervised row is the control
    if p.source == "given":
        cks = [Path(p.checkpoint)]
        if own_row:
            control = registry.get_agent(SOURCE).label  # that row is this checkpoint already
        else:
            policies.append((_rename(bench.load_learned(SOURCE, cks[0], device=device), CONTROL_LABEL), 0))
            training[CONTROL_LABEL] = {"checkpoint": str(cks[0])}
    else:
        # the from-scratch row's runs (same plan, same folders), or trained here
        src_runs = plan_runs([SOURCE], seed, seeds, out)
        if p.source == "scratch row":
            control = registry.get_agent(SOURCE).label
        else:
            trained = bench.train_runs(src_runs, env_kwargs, p.budgets, jobs=train_jobs, progress=progress,
                                       workers=workers, train_config={SOURCE: _config(SOURCE, train_config, precision)},
                                       clock=clock, device=device)
            policies += [(_rename(trained[r][0], CONTROL_LABEL), r.index) for r in src_runs]
            training[CONTROL_LABEL] = training_record(src_runs, trained, p.budgets[SOURCE], clock,
                                                      trained_alongside(src_runs, train_jobs))
        cks = [r.folder for r in src_runs]
    cks = [_checkpoint_file(c) for c in cks]

    def start(r) -> Path:  # the checkpoint warm run r fine-tunes from
        return cks[r.index] if len(cks) > 1 else cks[0]

    runs = plan_runs(p.warm, seed, seeds, out / FOLDER)
    trained = bench.train_runs(
        runs, env_kwargs, p.budgets, jobs=train_jobs, progress=progress, workers=workers, clock=clock, device=device,
        train_config=lambda r: {**_config(r.agent, train_config, precision), "init_from": str(start(r))})
    for a in p.warm:
        mine = [r for r in runs if r.agent == a]
        policies += [(_rename(trained[r][0], warm_label(a)), r.index) for r in mine]
        training[warm_label(a)] = {**training_record(mine, trained, p.budgets[a], clock,
                                                     trained_alongside(runs, train_jobs)),
                                   "init_from": _one_or_all(cks)}  # run k's checkpoint: the k-th
    # An RL row's gain counts against the same compute: the checkpoint trained on with its own
    # (supervised) loss for the warm budget, when that row is here; the continuation itself, and
    # every warm row without it, against the checkpoint.
    matched = warm_label(SOURCE) if SOURCE in p.warm else control
    meta = {"checkpoint": _one_or_all(cks), "checkpoint_source": p.source, "control": control,
            "fine_tuned": {a: warm_label(a) for a in p.warm},
            "controls": {warm_label(a): control if a == SOURCE else matched for a in p.warm}}
    return policies, training, meta
