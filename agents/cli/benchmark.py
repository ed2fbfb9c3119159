"""``svl-drl benchmark``: every policy on the same seeded episodes -> leaderboard, plots, overlays.

    svl-drl benchmark --quick --out runs/bench
    svl-drl benchmark --agents identity,intensity,oracle,ppo --train-minutes 5 --episodes 64 --out runs/b
    svl-drl benchmark --agents identity,ppo --checkpoint ppo=runs/ppo/model.zip --out runs/b
    svl-drl benchmark --agents identity,supervised,va3c --seeds 5 --train-minutes 7 --clock cpu --out runs/s
    svl-drl benchmark --agents identity,oracle --custom examples/custom_agent.py:ThresholdPolicy --out runs/b
    svl-drl benchmark --quick --track warm-start --out runs/warm   # RL fine-tuning of one supervised checkpoint
"""

from __future__ import annotations

import argparse
import math

from agents.cli.envargs import add_env_arguments
from agents.common.precision import add_precision_argument


def minutes(text: str):
    """'4' -> 4.0 (every learned agent) or 'va3c=6,ppo=2.5' -> {name: minutes}."""
    from agents.eval.benchmark import parse_name_values

    if "=" in text:
        return parse_name_values([text], "--train-minutes", float)
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes or NAME=M,..., got {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"minutes must be a positive number, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    from agents.eval.benchmark import (DEFAULT_AGENTS, FULL, FULL_RUN_TIME, QUICK, QUICK_RUN_TIME, TRAIN_SEED_OFFSET,
                                       builtin_agents)
    from agents.eval.warm_start import SOURCE

    p.add_argument("--agents", default=argparse.SUPPRESS,
                   help=f"comma-separated policies among {', '.join(builtin_agents())} "
                        f"(default: {', '.join(DEFAULT_AGENTS)}; with --custom only: none)")
    p.add_argument("--custom", action="append", default=[], metavar="MODULE:CLASS",
                   help="your own policy: an importable module or a .py file and a class (or factory) in it; "
                        "repeatable. See examples/custom_agent.py")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="use a trained va3c/ppo/a2c instead of training it (repeatable). "
                        "SB3 (ppo/a2c) zips contain pickles: load only files from a trusted source")
    p.add_argument("--train-minutes", type=minutes, default=argparse.SUPPRESS, metavar="M | NAME=M,...",
                   help="training budget of each learned agent listed without --checkpoint, in minutes "
                        "of --clock (one number for all, or per agent: va3c=12,ppo=4,a2c=4)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=argparse.SUPPRESS,
                   help="what --train-minutes measures: wall-clock minutes (default) or CPU-minutes of the "
                        "training process (2 busy cores spend 2 per minute; other load on the machine "
                        "does not shrink such a budget)")
    p.add_argument("--episodes", type=int, default=argparse.SUPPRESS, help="evaluation episodes (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="episode i is the env reset with seed SEED + i")
    p.add_argument("--out", default="runs/benchmark", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help=f"preset that takes {QUICK_RUN_TIME}, training included: the default agents from "
                        f"scratch and their warm-start rows (--track {QUICK['track']}), {QUICK['episodes']} episodes "
                        f"at {QUICK['patch_size']}^3, training budgets "
                        f"{','.join(f'{k}={v:g}' for k, v in QUICK['train_minutes'].items())} {QUICK['clock']}-minutes "
                        f"(the others' when named in --agents), warm-start fine-tuning {QUICK['warm_minutes']:g} "
                        f"(vA3C and supervised on {QUICK['train_config']['va3c']['num_envs']} envs per update), "
                        f"trained {QUICK['train_jobs']} at once; explicit options override it")
    p.add_argument("--preset", choices=("quick", "full"), default=argparse.SUPPRESS,
                   help=f"quick: as --quick; full: {FULL['seeds']} training seeds each of "
                        f"{', '.join(a for a in FULL['agents'] if a in FULL['train_minutes'])} from scratch at the "
                        f"quick budgets and (--track {FULL['track']}) "
                        f"{', '.join(a for a in FULL['agents'] if a in FULL['train_minutes'] and a != SOURCE)} "
                        f"fine-tuned {FULL['warm_minutes']:g} {FULL['clock']}-minutes from each seed's {SOURCE} run "
                        f"({SOURCE} trained on as long: their same-compute control), "
                        f"{FULL['episodes']} episodes, rliable statistics in stats.md and "
                        f"performance_profile.png; takes {FULL_RUN_TIME}; explicit options override it")
    p.add_argument("--track", choices=("scratch", "warm-start", "both"), default=argparse.SUPPRESS,
                   help="scratch (default; --quick, --preset full: both): learned agents train from their own "
                        "init; warm-start: train supervised (once per --seeds, or --checkpoint supervised=PATH), "
                        "score it alone as 'supervised (checkpoint)' and fine-tune every other learned agent "
                        "from it for --warm-minutes (run k from checkpoint k; supervised, when listed, trains on "
                        "from it as long: the same-compute control); both: the two in one leaderboard, "
                        "the from-scratch supervised runs being the checkpoints")
    p.add_argument("--warm-minutes", type=minutes, default=argparse.SUPPRESS, metavar="M | NAME=M,...",
                   help="fine-tuning budget of each warm-start row, in minutes of --clock (default: its "
                        f"--train-minutes; --quick {QUICK['warm_minutes']:g}, --preset full {FULL['warm_minutes']:g})")
    p.add_argument("--batch-size", type=int, default=8, help="episodes evaluated together")
    p.add_argument("--overlays", type=int, default=argparse.SUPPRESS,
                   help="number of cases drawn as slice overlays (default: 3)")
    p.add_argument("--workers", type=int, default=0, help="vA3C asynchronous workers while training (0 = synchronous)")
    p.add_argument("--train-jobs", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="learned agents trained at once, one process each (needs --clock cpu; default 1, "
                        f"--quick {QUICK['train_jobs']})")
    p.add_argument("--seeds", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="train every learned agent (those without --checkpoint) N times, on training seeds "
                        f"SEED+{TRAIN_SEED_OFFSET}+k, k=0..N-1 (k=0 is the single-seed run), the warm-start rows "
                        "and their supervised checkpoint too (warm run k from checkpoint k); each run is scored "
                        "on the same episodes, and stats.md gives the IQM and P(improvement) over runs x episodes "
                        f"(default: 1; --preset full: {FULL['seeds']})")
    p.add_argument("--bootstrap-reps", type=int, default=argparse.SUPPRESS, metavar="R",
                   help="bootstrap resamples of the rliable statistics in stats.md (default: 2000; "
                        f"--preset full: {FULL['bootstrap_reps']})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_precision_argument(p)
    add_env_arguments(p)


def run(args: argparse.Namespace) -> int:
    from agents.eval import benchmark as B
    from agents.cli.envargs import env_kwargs

    agents = getattr(args, "agents", None)
    episodes, overlays = getattr(args, "episodes", None), getattr(args, "overlays", None)
    minutes = getattr(args, "train_minutes", None)
    clock = getattr(args, "clock", None)
    jobs = getattr(args, "train_jobs", None)
    track, warm_minutes = getattr(args, "track", None), getattr(args, "warm_minutes", None)
    seeds, reps = getattr(args, "seeds", None), getattr(args, "bootstrap_reps", None)
    preset = getattr(args, "preset", None)
    if args.quick and preset not in (None, "quick"):
        raise ValueError(f"--quick is --preset quick; it cannot be combined with --preset {preset}")
    preset = "quick" if args.quick else preset
    train_config = None
    if preset is not None:  # the preset fills in what was not given
        P = B.PRESETS[preset]
        track = track if track is not None else P["track"]
        warm_minutes = warm_minutes if warm_minutes is not None else P.get("warm_minutes")
        clock = clock if clock is not None else P["clock"]
        agents = agents if agents is not None else ",".join(P.get("agents", B.DEFAULT_AGENTS))
        episodes = episodes if episodes is not None else P["episodes"]
        overlays = overlays if overlays is not None else P["overlays"]
        minutes = minutes if minutes is not None else dict(P["train_minutes"])
        train_config = dict(P["train_config"])
        jobs = jobs if jobs is not None else (P["train_jobs"] if clock == "cpu" else 1)
        seeds = seeds if seeds is not None else P.get("seeds", 1)
        reps = reps if reps is not None else P.get("bootstrap_reps")
    seeds = 1 if seeds is None else seeds
    reps = 2000 if reps is None else reps
    jobs = 1 if jobs is None else jobs
    if agents is None:
        agents = ",".join(B.DEFAULT_AGENTS) if not args.custom else ""
    episodes = 32 if episodes is None else episodes
    overlays = 3 if overlays is None else overlays
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if reps < 1:
        raise ValueError(f"--bootstrap-reps must be >= 1, got {reps}")
    kw = env_kwargs(args)
    checkpoints = B.parse_name_values(args.checkpoint, "--checkpoint")
    custom = [B.load_custom(spec) for spec in args.custom]
    result = B.run(custom, agents=agents, env_kwargs=kw, episodes=episodes, seed=args.seed, out=args.out,
                   train_minutes=minutes, checkpoints=checkpoints, batch_size=args.batch_size, overlays=overlays,
                   progress=not args.no_progress, workers=args.workers, clock=clock or "wall",
                   train_config=train_config, train_jobs=jobs, precision=args.precision, seeds=seeds,
                   stats_reps=reps, track=track or "scratch", warm_minutes=warm_minutes)
    print(result["leaderboard_md"].read_text())
    print(result["stats_md"].read_text())
    print(f"benchmark written to {result['out']}")
    return 0
