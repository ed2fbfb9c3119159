"""``svl-drl evaluate``: score a trained agent on seeded episodes against the truth.

    svl-drl evaluate --checkpoint runs/va3c --episodes 64 --seed 1000 --out eval/

Writes ``per_case.csv`` (one row per episode: Dice/IoU/HD95/ASD/continuity of the refined mask
and of the noisy annotation) and ``summary.json`` (mean and 95 % CI of each, for the refined
mask and the annotation). Episode i is the env reset with seed ``seed + i`` (the same
volumes and noise for every agent). Env options default to the checkpoint's training env.

SECURITY: vA3C checkpoints load tensor-only (``weights_only=True``: no code from the file
runs). PPO/A2C ``model.zip`` files are stable-baselines3's format, which holds pickled Python
objects: loading one can run code. Evaluate only zips from a trusted source (your own runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents import registry
from agents.cli.envargs import add_env_arguments, env_config
from svl_env import EnvConfig

METRICS = ("dice", "iou", "hd95", "asd", "continuity")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="RUN|FILE",
                   help="a run folder or checkpoint file: vA3C or rllib-ppo checkpoint.pt (tensor-only, safe to "
                        "load) or a PPO/A2C model.zip (SB3's format: pickles inside that can run code when loaded "
                        "-- only from a trusted source)")
    p.add_argument("--episodes", type=int, default=32, help="number of seeded episodes")
    p.add_argument("--seed", type=int, default=1000, help="seed of episode 0 (episode i: seed + i)")
    p.add_argument("--out", default="runs/evaluate", help="folder for per_case.csv and summary.json")
    p.add_argument("--batch-size", type=int, default=8, help="episodes run in parallel")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_env_arguments(p)
    # None = "as the checkpoint was trained": filled in from its config in run()
    p.set_defaults(patch_size=None, max_steps=None, noise=None)


def run(args: argparse.Namespace) -> int:
    from agents.eval.episodes import mean_ci, run_episodes, write_json, write_per_case_csv

    from agents.common.checkpoint import check_dir_path

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_dir_path(args.out, "--out")  # before the episodes run, not after
    policy, _ = registry.load_policy(args.checkpoint, args.device)
    # the env the policy was trained on (tensor-only checkpoints record it; SB3 zips do not)
    trained = EnvConfig.from_json((getattr(policy, "config", None) or {}).get("env", {}) or {})
    if args.patch_size is None:
        ps = trained.patch_size
        args.patch_size = list(ps) if isinstance(ps, tuple) else [ps]
    if args.max_steps is None:
        args.max_steps = trained.episode_steps
    if args.noise is None and args.data == trained.data:
        args.noise = trained.noise
    env = env_config(args).replace(action_set=trained.action_set)
    records, curve = run_episodes(policy, env, args.episodes, args.seed, batch_size=args.batch_size,
                                  progress=not args.no_progress, desc="evaluate")
    out = Path(args.out)
    write_per_case_csv(records, out / "per_case.csv")
    summary = {"checkpoint": str(args.checkpoint), "episodes": args.episodes, "seed": args.seed,
               "env": env.to_json(strict=False),
               "refined": {}, "annotation": {}, "dice_curve": [float(x) for x in curve.mean(0)]}
    for m in METRICS:
        for key, col in (("refined", m), ("annotation", f"{m}_annotation")):
            mean, ci = mean_ci(r[col] for r in records)
            summary[key][m] = {"mean": mean, "ci95": ci, "n": len(records)}
    mean, ci = mean_ci(r["dice_gain"] for r in records)
    summary["dice_gain"] = {"mean": mean, "ci95": ci, "n": len(records)}
    write_json(summary, out / "summary.json")
    r, a = summary["refined"]["dice"], summary["annotation"]["dice"]
    print(f"Dice vs truth: refined {r['mean']:.4f} ± {r['ci95']:.4f}, annotation {a['mean']:.4f} ± {a['ci95']:.4f} "
          f"({args.episodes} episodes) -> {out}")
    return 0
