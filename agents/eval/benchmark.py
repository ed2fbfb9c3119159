"""The policy leaderboard: every policy on the same seeded episodes, a table and pictures.

Python API (a researcher's own policy beside the built-ins)::

    from agents.eval import benchmark
    result = benchmark.run(policies=[MyPolicy()], agents=["identity", "intensity", "oracle"],
                           env_kwargs={"patch_size": 32}, episodes=32, seed=0, out="runs/bench")
    print(result["leaderboard_md"].read_text())

Files in ``out``:

    per_case.csv       one row per (policy, training run, episode): Dice, IoU, HD95, ASD, continuity,
                       ... (``agents.eval.episodes.PER_CASE_FIELDS`` and ``run``) -- the source of
                       every number
    curves.csv         Dice vs truth after each step of each episode (step 0 = annotation)
    leaderboard.csv    mean and 95% CI (Student t) per policy over its runs x episodes, computed
                       FROM per_case.csv
    leaderboard.md     the same as a Markdown table (``leaderboard_from_per_case``)
    stats.csv, .md     rliable statistics from per_case.csv: Dice IQM and mean with stratified-
                       bootstrap 95% CIs, P(improvement) over each policy's control
                       (``agents.eval.stats``)
    performance_profile.png  fraction of runs x episodes above each Dice threshold, with CIs
    metrics.png        bars with 95% CIs: Dice, IoU, HD95, continuity, Dice gain
    dice_steps.png     mean Dice (95% CI band) after each step within an episode
    overlays/          slice overlays (image, annotation, truth, each policy's refined mask)
    benchmark.json     settings, training budgets and run folders, timings
    runs/<agent>/      training runs of the learned agents (checkpoints; reusable with
                       ``--checkpoint NAME=PATH``); ``runs/<agent>/seed<k>/`` with ``seeds`` > 1
    warm-start/runs/<agent>/  the fine-tuned runs of the warm-start track (``track``; ``seed<k>/``
                       with ``seeds`` > 1)

Fairness: episode i is the env reset with seed ``seed + i`` for every policy (same volume,
same noise). Learned agents listed without a checkpoint are trained first, each for its
budget of minutes (wall-clock, or CPU-minutes with ``clock="cpu"``), on training seeds
``seed + TRAIN_SEED_OFFSET + i`` -- disjoint from the evaluation seeds. With ``seeds=N`` each is
trained N times, run k with ``seed + TRAIN_SEED_OFFSET + k`` as its seed (``agents.eval.seeds``;
run 0 is the single-seed run), and every run is scored on the same episodes. The oracle reads
the truth and is labelled "oracle (upper bound)".
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from agents.eval import episodes as E
from agents.eval import seeds as S
from agents.eval import stats as ST
from agents.eval import warm_start as W
from agents import registry
from agents.common.precision import PRECISIONS
from agents.eval.leaderboard import leaderboard_from_per_case, write_leaderboard
from agents.eval.plots import mask_dice, plot_dice_steps, plot_metrics, plot_overlay
from agents.heuristics import HEURISTICS, make_heuristic
from svl_env import EnvConfig

#: the default rows: the heuristics, then the default learned agents of ``agents.registry``
DEFAULT_AGENTS = ("identity", "random", "majority", "opening", "closing", "intensity", "oracle",
                  *registry.agent_names(benchmark=True))


def learned_agents() -> tuple[str, ...]:
    """Every trainable agent of ``agents.registry`` (the built-in ones and any registered since)."""
    return registry.agent_names()


def builtin_agents() -> tuple[str, ...]:
    """The names ``--agents`` accepts: heuristics, then the learned agents."""
    return tuple(HEURISTICS) + learned_agents()


TRAIN_SEED_OFFSET = 100_000
#: How long ``--quick`` takes on an idle 2-core machine (README "Baselines and leaderboard"):
#: measured 12 min 32 s with every row (2026-12-06, Intel Xeon); ``--quick --help`` and README
#: say this.
QUICK_RUN_TIME = "about 13 min on 2 idle CPU cores"
#: ``--quick``: every default agent from scratch and the warm-start rows (track "both"), training
#: included, in ``QUICK_RUN_TIME``. Budgets are CPU-minutes (2 busy cores spend 2 per minute), so
#: that a machine shared with other programs trains the same agents, only more slowly. Every
#: learned agent gets the same budget from scratch (3 CPU-min; the supervised run is also the
#: warm-start checkpoint), and every warm-start row the same fine-tuning budget (1.5 CPU-min).
#: Ten learners in ~13 min leave 3 CPU-min each from scratch; at 7 CPU-min (the preset before the
#: warm-start rows) vA3C reached 0.80-0.83 Dice. vA3C and its supervised control update on 4
#: environments at a time (default 8): at a few CPU-minutes more, noisier updates beat fewer,
#: cleaner ones (fp32, 7 CPU-min: 8 envs 0.649, 4 envs 0.775, 2 envs 0.803 Dice), and bf16 moves the
#: best from 2 to 4 (bf16, 7 CPU-min, train seed 100000: 2 envs 0.799, 4 envs 0.830; seed 100001:
#: 4 envs 0.818). Five training processes at once keep both cores busy in both phases.
QUICK = dict(episodes=32, patch_size=32, clock="cpu", overlays=3, train_jobs=5, track="both",
             train_minutes={"va3c": 3.0, "ppo": 3.0, "a2c": 3.0, "supervised": 3.0, "voxel-ppo": 3.0},
             warm_minutes=1.5,
             train_config={"va3c": {"num_envs": 4}, "supervised": {"num_envs": 4}})
#: How long ``--preset full`` takes (README "Statistics over training seeds"): measured 79 min
#: 50 s on 2 cores shared with another benchmark, the process using 96 CPU-min (90 of them the
#: budgeted training), i.e. about 50-60 min on 2 idle cores.
FULL_RUN_TIME = "about 60 min on 2 CPU cores"
#: ``--preset full``: the issue-15 statistics -- 5 training seeds of vA3C, its supervised control,
#: voxel-PPO and SB3 PPO from scratch at the quick preset's budget and settings, and (track
#: "both") vA3C, voxel-PPO and SB3 PPO fine-tuned 1.5 CPU-min from each seed's supervised run
#: (warm run k from supervised run k) next to supervised trained on as long from the same run
#: (their control at equal compute), all scored on the same 32 episodes, rliable IQM /
#: P(improvement) / performance profile (``stats.md``). A2C is left out for time (it collapses at
#: this budget: README leaderboard); name it in --agents to add it.
FULL = dict(episodes=32, patch_size=32, clock="cpu", overlays=0, train_jobs=4, track="both", seeds=5,
            agents=("identity", "majority", "intensity", "va3c", "supervised", "voxel-ppo", "ppo"),
            train_minutes=dict(QUICK["train_minutes"]), warm_minutes=1.5, train_config=dict(QUICK["train_config"]),
            bootstrap_reps=1000)
PRESETS = {"quick": QUICK, "full": FULL}
#: what a training budget measures: "wall" (elapsed minutes) or "cpu" (CPU-minutes of the process)
CLOCKS = ("wall", "cpu")


# --------------------------------------------------------------------- policies
def parse_name_values(items: Iterable[str] | None, what: str, convert=str) -> dict:
    """["a=1", "b=2"] or ["a=1,b=2"] -> {"a": convert("1"), ...}; ValueError on bad syntax."""
    out = {}
    for item in items or ():
        for part in str(item).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"{what} must look like NAME=VALUE, got {part!r}")
            k, v = part.split("=", 1)
            try:
                out[k.strip()] = convert(v.strip())
            except ValueError:
                raise ValueError(f"{what}: bad value {v!r} for {k.strip()!r}") from None
    return out


def load_custom(spec: str, **kwargs):
    """``module:Class`` (or ``path/to/file.py:Class``) -> an instance (called with no arguments
    or ``kwargs``). The object needs ``act(obs, info, deterministic)``; ``name`` labels it."""
    if ":" not in spec:
        raise ValueError(f"--custom must look like module:Class or file.py:Class, got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise FileNotFoundError(f"custom agent file not found: {path}")
            sp = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(sp)
            sp.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"cannot import custom agent module {mod_name!r}: {exc}") from None
    if not hasattr(module, attr):
        raise ValueError(f"{mod_name} has no attribute {attr!r}")
    obj = getattr(module, attr)
    # a class or a factory function is called; an object that already has act() is used as is
    is_instance = hasattr(obj, "act") and not isinstance(obj, type)
    policy = obj if is_instance else obj(**kwargs)
    check_policy(policy)
    return policy


def check_policy(policy) -> None:
    if not callable(getattr(policy, "act", None)):
        raise ValueError(f"{policy!r} is not a policy: it needs an act(obs, info, deterministic) method")


def load_learned(name: str, path, device="cpu"):
    """A trained learned agent from its checkpoint or run folder (SB3 zips hold pickles:
    trusted files only)."""
    if name not in learned_agents():
        raise ValueError(f"--checkpoint applies to the learned agents {list(learned_agents())}, not {name!r}")
    return registry.get_agent(name).load_policy(path, device=device)


def train_learned(name: str, env_kwargs: dict, minutes: float, seed: int, out: Path, progress: bool,
                  workers: int = 0, config: dict | None = None, clock: str = "wall"):
    """Train a learned agent for ``minutes`` of ``clock`` ("wall" or "cpu" minutes); its run
    folder is ``out``."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if name not in learned_agents():
        raise ValueError(f"{name!r} is not a learned agent ({list(learned_agents())})")
    spec = registry.get_agent(name)
    options = dict(config or {})
    if spec.takes_workers:
        options["workers"] = workers
    budget = {"cpu_minutes" if clock == "cpu" else "minutes": minutes}
    pol = spec.train_fn()(env_kwargs=env_kwargs, seed=seed, out=out, progress=progress, **budget, **options)
    try:
        pol.name = spec.label
    except AttributeError:  # a read-only property: keep the policy's own name
        pass
    return pol


def _train_job(name: str, env_kwargs: dict, minutes: float, seed: int, run_dir: str, workers: int,
               config: dict | None, clock: str, threads: int) -> tuple[str, float]:
    """Train one learned agent in a worker process (``train_jobs`` > 1); returns the file its
    policy loads from and the wall minutes it took."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train_learned(name, env_kwargs, minutes, seed, Path(run_dir), progress=False, workers=workers, config=config,
                  clock=clock)
    saved = Path(run_dir) / registry.get_agent(name).checkpoint
    return str(saved), (time.perf_counter() - t0) / 60


def train_runs(runs: Sequence[S.TrainRun], env_kwargs: dict, budgets: dict, *, jobs: int = 1, progress: bool = True,
               workers: int = 0, train_config: dict | Callable[[S.TrainRun], dict | None] | None = None,
               clock: str = "wall", device="cpu") -> dict[S.TrainRun, tuple]:
    """Train ``runs`` (``agents.eval.seeds.plan_runs``) -> {run: (policy, wall minutes)}: one after
    another here, or in ``jobs`` spawned processes (``agents.eval.seeds.train_runs``). ``budgets``:
    {agent: minutes of ``clock``}; ``train_config``: {agent: trainer options}, or a function
    run -> its trainer options (runs of one agent with different options, e.g. each warm-start
    run its own ``init_from``)."""
    config = _run_config(train_config)
    return S.train_runs(
        runs, jobs=jobs, progress=progress,
        train=lambda r: train_learned(r.agent, env_kwargs, budgets[r.agent], r.seed, r.folder, progress,
                                      workers=workers, config=config(r), clock=clock),
        job=_train_job, job_args=_job_args(env_kwargs, budgets, workers, config, clock),
        load=lambda r, path: load_learned(r.agent, path, device=device))


def _run_config(train_config) -> Callable[[S.TrainRun], dict | None]:
    """run -> its trainer options, from {agent: options} (or such a function already)."""
    if callable(train_config):
        return train_config
    cfg = train_config or {}
    return lambda r: cfg.get(r.agent)


def _job_args(env_kwargs: dict, budgets: dict, workers: int, train_config, clock: str):
    """run -> the arguments of ``_train_job`` for it (without the thread count); ``train_config``
    as in ``train_runs``."""
    config = _run_config(train_config)
    return lambda r: (r.agent, env_kwargs, budgets[r.agent], r.seed, str(r.folder), workers, config(r), clock)


def train_in_parallel(names: Sequence[str], env_kwargs: dict, budgets: dict, seed: int, out: Path, jobs: int,
                      workers: int = 0, train_config: dict | None = None, clock: str = "cpu",
                      progress: bool = True) -> dict[str, tuple[str, float]]:
    """Train the learned agents ``names`` in ``jobs`` processes at once -> {name: (file, minutes)}.

    Fair only with CPU-time budgets (``clock="cpu"``): each agent then gets the same compute,
    however the processes share the cores; each process gets ``cores // jobs`` torch threads.
    On a 2-core machine the learners (each about one busy core: small batches, a host-side
    component count per step) finish together instead of one after another.
    """
    runs = S.plan_runs(names, seed, 1, out)
    done = S.train_in_pool(runs, _train_job, _job_args(env_kwargs, budgets, workers, train_config, clock),
                           lambda r, path: path, jobs=jobs, progress=progress)
    return {r.agent: done[r] for r in runs}


def _policy_name(p) -> str:
    return str(getattr(p, "name", type(p).__name__))


# ------------------------------------------------------------------------- run
def run(policies: Sequence = (), *, agents: Sequence[str] | str | None = DEFAULT_AGENTS,
        env_kwargs: EnvConfig | dict | None = None,
        episodes: int = 32, seed: int = 0, out="runs/benchmark", train_minutes: float | dict | None = None,
        checkpoints: dict | None = None, batch_size: int = 8, overlays: int = 3, progress: bool = True,
        workers: int = 0, train_config: dict | None = None, clock: str = "wall", train_jobs: int = 1,
        precision: str | None = None, seeds: int = 1, stats_reps: int = ST.DEFAULT_REPS,
        track: str = "scratch", warm_minutes: float | dict | None = None) -> dict:
    """Benchmark built-in agents (``agents``) and policy objects (``policies``) on the same
    seeded episodes; write the files listed in the module doc into ``out``.

    Args:
        policies: extra policy objects (anything with ``act``; ``name`` labels it).
        agents: built-in names (``builtin_agents()``), a list or a comma-separated string.
        env_kwargs: ``SVLDRLVectorEnv`` keyword arguments or an ``EnvConfig`` (need the truth:
            phantom default).
        episodes, seed: episode i is the env reset with seed ``seed + i``.
        train_minutes: budget per learned agent without a checkpoint: one number for all or
            {name: minutes}; required when a learned agent must be trained.
        checkpoints: {name: path} of trained learned agents (skips their training).
        batch_size: environments evaluated together.
        overlays: number of cases drawn in ``overlays/``.
        workers: vA3C asynchronous workers while training (0 = synchronous).
        train_config: {name: {option: value}} passed to the trainers.
        clock: what ``train_minutes`` measures: "wall" minutes or "cpu" minutes of the
            training process (robust to other load on the machine).
        train_jobs: learned agents trained at once, each in its own process (needs
            ``clock="cpu"``, so that sharing the cores does not shrink anyone's budget).
        precision: the learned agents' training arithmetic, auto (None), fp32 or bf16
            (``agents.common.precision``); each run's config.json records the resolved one.
        seeds: training runs per learned agent that is trained here (``agents.eval.seeds``):
            run k on training seed ``seed + TRAIN_SEED_OFFSET + k``, each scored on the same
            episodes; per_case.csv's ``run`` column tells them apart. The warm-start rows and
            their checkpoint (``track``) get N runs as well.
        stats_reps: bootstrap replications of the statistics (``agents.eval.stats``).
        track: "scratch" (default), "warm-start" or "both" (``agents.eval.warm_start``): the
            learned agents fine-tune from a ``supervised`` checkpoint, scored alone as the control.
            With ``seeds`` = N the checkpoint is trained N times too (or, for "both", is the
            supervised row's N runs) and warm run k fine-tunes from checkpoint k on training seed
            ``seed + TRAIN_SEED_OFFSET + k``; a checkpoint given in ``checkpoints["supervised"]``
            is the one start (and the control) of all N warm runs.
        warm_minutes: the warm-start rows' fine-tuning budgets (one number or {name: minutes});
            default ``train_minutes``.

    Returns {"leaderboard": rows, "per_case_csv", "leaderboard_csv", "leaderboard_md",
    "metrics_png", "dice_steps_png", "overlays": [paths], "stats": rows, "stats_csv", "stats_md",
    "performance_profile_png", "out"}.
    """
    t_start = time.perf_counter()
    env = EnvConfig.from_any(env_kwargs)
    # what the caller asked for: the trainers' env_kwargs and the leaderboard's note
    env_kwargs = env.to_kwargs() if isinstance(env_kwargs, EnvConfig) else dict(env_kwargs or {})
    if isinstance(agents, str):
        agents = [a.strip() for a in agents.split(",") if a.strip()]
    agents = list(agents or [])
    learned = learned_agents()
    unknown = [a for a in agents if a not in HEURISTICS and a not in learned]
    if unknown:
        raise ValueError(f"unknown agent(s) {unknown}; built-in: {', '.join(builtin_agents())} "
                         "(own policies: --custom)")
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if overlays < 0:
        raise ValueError(f"overlays must be >= 0, got {overlays}")
    checkpoints = dict(checkpoints or {})
    bad = [k for k in checkpoints if k not in learned]
    if bad:
        raise ValueError(f"--checkpoint names must be learned agents {list(learned)}, got {bad}")
    for k, p in checkpoints.items():
        if not Path(p).exists():
            raise FileNotFoundError(f"checkpoint for {k} not found: {p}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if not isinstance(train_jobs, (int, np.integer)) or train_jobs < 1:
        raise ValueError(f"train_jobs must be a positive int, got {train_jobs!r}")
    if train_jobs > 1 and clock != "cpu":
        raise ValueError("training agents in parallel (train_jobs > 1) needs CPU-time budgets (clock='cpu'): "
                         "wall-clock budgets would shrink with every process sharing the cores")
    # checked before any training
    warm = W.plan(agents, track, checkpoints, train_minutes, sys.modules[__name__], warm_minutes)
    agents = warm.scratch
    to_train = [a for a in agents if a in learned and a not in checkpoints]
    budgets = _budgets(train_minutes, to_train)
    seeds = S.check_seeds(seeds)
    if precision not in (None, *PRECISIONS):
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    train_config = {**(train_config or {}), **{a: {**(train_config or {}).get(a, {}), "precision": precision}
                                               for a in to_train if registry.get_agent(a).takes_precision}}
    for p in policies:
        check_policy(p)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Fail on a bad environment before spending minutes on training; the evaluation env's
    # source remembers its volumes, so the policies after the first skip phantom generation.
    eval_env = E.memo_env_config(env)
    if not eval_env.data.has_truth:
        raise ValueError("the benchmark scores against the truth: it needs phantoms or a folder with --labels clean")

    # ---- build the policy list (train first: evaluation then runs back to back)
    runs = S.plan_runs(to_train, seed + TRAIN_SEED_OFFSET, seeds, out)
    trained = train_runs(runs, env_kwargs, budgets, jobs=train_jobs, progress=progress, workers=workers,
                         train_config=train_config, clock=clock, device=env.device)
    built, training, agent_names = [], {}, {}  # built: (policy, its training run)
    for a in agents:
        agent_names[a] = len(built)  # the index of its first policy, named below
        if a in learned:
            label = registry.get_agent(a).label
            if a in checkpoints:
                built.append((load_learned(a, checkpoints[a], device=env.device), 0))
                training[label] = {"checkpoint": str(checkpoints[a])}
            else:
                mine = [r for r in runs if r.agent == a]
                built += [(trained[r][0], r.index) for r in mine]
                training[label] = S.training_record(mine, trained, budgets[a], clock,
                                                    alongside=S.trained_alongside(runs, train_jobs))
        else:
            built.append((make_heuristic(a), 0))
    warm_meta = {}
    if track != "scratch":
        warm_pols, warm_training, warm_meta = W.run_track(
            warm, bench=sys.modules[__name__], env_kwargs=env_kwargs, seed=seed + TRAIN_SEED_OFFSET, out=out,
            progress=progress, workers=workers, train_config=train_config, precision=precision, clock=clock,
            train_jobs=train_jobs, device=env.device, seeds=seeds)
        built += warm_pols  # (policy, its training run): run k of a warm row fine-tuned from checkpoint k
        training.update(warm_training)
    built += [(p, 0) for p in policies]
    names = [_policy_name(p) for p, _ in built]
    agent_names = {a: names[i] for a, i in agent_names.items()}
    # the runs of one agent share its name; (name, run) must be unique
    pairs = [(n, k) for n, (_, k) in zip(names, built)]
    dup = sorted({n for n, k in pairs if pairs.count((n, k)) > 1})
    if dup:
        raise ValueError(f"two policies share the name(s) {dup}; give each a distinct .name")
    if not built:
        raise ValueError("nothing to benchmark: give --agents and/or custom policies")

    # ---- evaluate every policy on the same episodes
    from tqdm.auto import tqdm

    records, curves, masks = [], {}, {}
    keep = list(range(min(episodes, max(4 * overlays, overlays))))
    t_eval = time.perf_counter()
    for (pol, k), name in zip(tqdm(built, desc="benchmark", disable=not progress), names):
        sink: dict = {}
        # overlays show each policy's first run: only its masks are kept
        recs, curve = E.run_episodes(pol, eval_env, episodes, seed, batch_size=batch_size, progress=progress,
                                     desc=f"eval {name}" + (f" run {k}" if k else ""),
                                     masks_sink=sink if k == 0 else None, mask_episodes=keep)
        records += [{**r, E.RUN_FIELD: k} for r in recs]
        curves.setdefault(name, []).append(curve)
        if k == 0:
            masks[name] = sink
    eval_seconds = time.perf_counter() - t_eval

    per_case = E.write_per_case_csv(records, out / "per_case.csv")
    curves_csv = E.write_curves_csv({n: np.stack(c) for n, c in curves.items()}, out / "curves.csv")
    rows = leaderboard_from_per_case(per_case)
    notes = _notes(env_kwargs, episodes, seed, training)
    lb_csv, lb_md = write_leaderboard(rows, out, title=f"Leaderboard ({episodes} episodes, seed {seed})", notes=notes)
    controls = S.control_names(agents, agent_names)
    # a warm-start row is compared with the supervised continuation (same compute) or the checkpoint
    controls.update(warm_meta.get("controls", {}))
    stats = ST.write_stats(per_case, out, controls, reps=stats_reps,
                           title=f"Statistics over training runs ({episodes} episodes, seed {seed})")
    metrics_png = plot_metrics(rows, out / "metrics.png")
    steps_png = plot_dice_steps(E.read_curves_csv(curves_csv), out / "dice_steps.png")
    overlay_paths = []
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
        chosen = _pick_overlay_cases(masks[names[0]], overlays)
        for ep in chosen:
            case = {n: masks[n][ep] for n in names if ep in masks[n]}
            overlay_paths.append(plot_overlay(case, ep, out / "overlays" / f"episode_{ep:03d}.png"))
    meta = {"env_kwargs": env.to_json(strict=False),
            "episodes": episodes, "seed": seed, "train_seed": seed + TRAIN_SEED_OFFSET, "seeds": seeds,
            "policies": list(dict.fromkeys(names)),
            "training": training, "precision": "auto" if precision is None else precision, "track": track,
            **({"warm_start": warm_meta} if warm_meta else {}),
            "eval_seconds": round(eval_seconds, 1),
            "total_seconds": round(time.perf_counter() - t_start, 1), "host": platform.node(),
            "python": platform.python_version()}
    E.write_json(meta, out / "benchmark.json")
    return {"leaderboard": rows, "per_case_csv": per_case, "curves_csv": curves_csv, "leaderboard_csv": lb_csv,
            "leaderboard_md": lb_md, "metrics_png": metrics_png, "dice_steps_png": steps_png,
            "overlays": overlay_paths, "stats": stats["rows"], "stats_csv": stats["stats_csv"],
            "stats_md": stats["stats_md"], "performance_profile_png": stats["profile_png"], "out": out}


def _budgets(train_minutes, to_train) -> dict:
    if not to_train:
        return {}
    if train_minutes is None:
        raise ValueError(f"{', '.join(to_train)} must be trained first: give --train-minutes M "
                         f"(or --checkpoint NAME=PATH, or --quick)")
    if isinstance(train_minutes, dict):
        missing = [a for a in to_train if a not in train_minutes]
        if missing:
            raise ValueError(f"no training budget for {missing} (--train-minutes NAME=M,...)")
        b = {a: float(train_minutes[a]) for a in to_train}
    else:
        b = {a: float(train_minutes) for a in to_train}
    for a, m in b.items():
        if not m > 0 or math.isinf(m):
            raise ValueError(f"training budget of {a} must be a positive number of minutes, got {m}")
    return b


def _pick_overlay_cases(sink: dict, n: int) -> list[int]:
    """Up to n episodes, preferring ones whose annotation is non-empty and wrong."""
    eps = sorted(sink)
    good = [e for e in eps if sink[e]["annotation"].any() and sink[e]["truth"].any()
            and mask_dice(sink[e]["annotation"], sink[e]["truth"]) < 0.98]
    rest = [e for e in eps if e not in good]
    return (good + rest)[:n]


def _notes(env_kwargs, episodes, seed, training) -> list[str]:
    env = ", ".join(f"{k}={v}" for k, v in env_kwargs.items() if v is not None and k != "device")
    env = (env or "defaults") + ("" if env_kwargs.get("noise") else " (default noise of the data)")
    notes = [f"Environment: {env}. Episodes: seeds {seed}..{seed + episodes - 1}."]
    for name, t in training.items():
        if "checkpoint" in t:
            notes.append(f"{name}: loaded from {t['checkpoint']}.")
        elif "runs" in t:
            notes.append(S.training_note(name, t))
        else:
            unit = "CPU-min" if t.get("clock") == "cpu" else "min"
            alongside = f", in parallel with {t['trained_alongside']} other(s)" if t.get("trained_alongside") else ""
            init = f", fine-tuned from {t['init_from']}" if t.get("init_from") else ""
            notes.append(f"{name}: trained {t['minutes_used']} min wall (budget {t['minutes_budget']:g} {unit}"
                         f"{alongside}{init}), run {t['run']}.")
    return notes
