"""Does vA3C learn? Dice vs truth on held-out phantoms, ablations, and training throughput.

Trains vA3C on SVLDRL-v0 (phantoms, default noise, 32^3 patches) and scores, on the same
held-out seeded episodes (``agents.eval.episodes.run_episodes``; episode i = reset seed
``eval_seed + i``, disjoint from training, whose env seeds are hashes of (seed, update)):

- the noisy annotation (identity policy) and a 3x3x3 majority filter of it;
- the untrained policy (vA3C's keep-biased init, which *is* the identity, and PixelRL's
  near-uniform init);
- vA3C full and, at the same budget, the ``supervised`` control (agents.supervised: vA3C's network
  and Warmup loss for the whole budget, no value or policy stage); ablations: without Warmup,
  without the reward-map convolution, without the counterfactual action rewards, and plain
  PixelRL-style A2C (no warmup, no supervised term, uniform init) -- ablations at a shorter
  budget, stated in the table, next to vA3C full at that same budget.

Budgets are CPU time of the training process by default: "10 minutes on 2 cores" is
``--cpu-minutes 20`` (with 2 threads), a budget other programs sharing the machine cannot
shrink; ``--minutes`` gives wall-clock budgets instead. The throughput section measures
voxel-agent updates per second ((voxel, state) pairs entering a gradient step, RL stage) in
the sync mode and with 1 and 2 asynchronous workers, each for ``--throughput-seconds``.

    python benchmarks/va3c_learning.py [--cpu-minutes 20] [--ablation-cpu-minutes 8] \
        [--episodes 64] [--out benchmarks/results/va3c_learning.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a machine whose cores
# are shared with other jobs, spinning OpenMP threads made training 3-5x slower (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _evaluate(policy, env_kwargs, episodes, seed, progress):
    from agents.eval.episodes import mean_ci, run_episodes

    recs, _ = run_episodes(policy, env_kwargs, episodes, seed, batch_size=8, progress=progress)
    d = [r["dice"] for r in recs]
    m, ci = mean_ci(d)
    return {"dice": m, "ci95": ci, "per_case": d}


def _majority():
    from agents.heuristics import MajorityFilter

    return MajorityFilter()


def _train(env_kwargs, seed, budget, progress, **config):
    from agents.va3c.train import run_training

    t0 = time.perf_counter()
    policy, _, run = run_training(env_kwargs, seed=seed, progress=progress, tensorboard=False, **budget, **config)
    return policy, {"updates": run.update, "wall_min": (time.perf_counter() - t0) / 60,
                    "cpu_min": run.cpu_elapsed / 60}


def _train_and_evaluate(job: dict) -> dict:
    """One table row in its own process (``--jobs`` > 1): train, then evaluate."""
    torch.set_num_threads(job["threads"])
    pol, tr = _train(job["env_kwargs"], job["seed"], job["budget"], False, **job["config"])
    return {"name": job["name"], "budget": job["budget_label"], **tr,
            **_evaluate(pol, job["env_kwargs"], job["episodes"], job["eval_seed"], False)}


def _throughput(env_kwargs, workers, seconds, threads, seed=0):
    """Voxel-agent updates per second of the RL stage (policy stage only)."""
    from agents.va3c import Budget, VA3CRun

    cfg = dict(warmup=False, value=False, threads=threads if workers == 0 else max(1, threads // workers))
    run = VA3CRun(env_kwargs, budget=Budget(minutes=seconds / 60), seed=seed, workers=workers, config=cfg)
    run.run()
    h = run.history
    if not h:
        return float("nan"), 0
    start = min(m["elapsed"] - m["seconds"] for m in h)
    end = max(m["elapsed"] for m in h)
    return sum(m["voxel_updates"] for m in h) / max(end - start, 1e-9), len(h)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cpu-minutes", type=float, default=20.0, help="vA3C full: CPU-time budget (2 cores x 10 min)")
    ap.add_argument("--ablation-cpu-minutes", type=float, default=8.0, help="ablations: CPU-time budget")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget instead (full run)")
    ap.add_argument("--ablation-minutes", type=float, default=None, help="wall-clock budget instead (ablations)")
    ap.add_argument("--episodes", type=int, default=64, help="held-out evaluation episodes")
    ap.add_argument("--eval-seed", type=int, default=100_000, help="seed of held-out episode 0")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--patch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the '2 cores')")
    ap.add_argument("--throughput-seconds", type=float, default=60.0)
    ap.add_argument("--skip", nargs="*", default=[], choices=("ablations", "throughput", "full"),
                    help="sections to skip")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ap.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    ap.add_argument("--jobs", type=int, default=1,
                    help="train/evaluate the vA3C rows in this many parallel processes (CPU budgets stay fair)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    env_kwargs = dict(patch_size=args.patch_size)
    from agents.heuristics import IdentityPolicy
    from agents.supervised import SupervisedRun
    from agents.va3c import DEFAULT_CONFIG, VA3CPolicy

    def budget(full: bool) -> dict:
        wall = args.minutes if full else args.ablation_minutes
        if wall is not None:
            return {"minutes": wall}
        return {"cpu_minutes": args.cpu_minutes if full else args.ablation_cpu_minutes}

    def budget_label(full: bool) -> str:
        b = budget(full)
        return f"{b['minutes']:g} min wall" if "minutes" in b else f"{b['cpu_minutes']:g} CPU-min"

    ev = lambda pol: _evaluate(pol, env_kwargs, args.episodes, args.eval_seed, progress)  # noqa: E731
    rows: list[dict] = []
    t_start = time.perf_counter()

    def add(name, pol, train=None, budget_s="-"):
        r = {"name": name, "budget": budget_s, **(train or {}), **ev(pol)}
        rows.append(r)
        print(f"  {name:45s} Dice {r['dice']:.4f} ± {r['ci95']:.4f}", flush=True)

    print(f"held-out evaluation: {args.episodes} episodes from seed {args.eval_seed}, patch {args.patch_size}^3")
    add("noisy annotation (identity)", IdentityPolicy())
    add("majority filter 3x3x3 of the annotation", _majority())
    add("untrained vA3C (keep-biased init)", VA3CPolicy.untrained(env_kwargs, seed=args.seed))
    add("untrained, uniform init (PixelRL)", VA3CPolicy.untrained(env_kwargs, seed=args.seed, keep_bias=0.0))

    variants = []
    if "ablations" not in args.skip:
        variants += [
            ("vA3C full (ablation budget)", {}),
            ("  without Warmup", {"warmup": False}),
            ("  without reward-map convolution", {"reward_conv": False}),
            ("  without counterfactual action rewards", {"action_rewards": False}),
            ("  warmup only (no value / policy stages)", {"value": False, "policy": False}),
            ("  dilated full-resolution backbone (PixelRL trunk, width 16)",
             {"backbone": "dilated", "width": 16, "depth": 3}),
            ("  plain A2C (no warmup, no supervised term, uniform init)",
             {"warmup": False, "sup_coef": 0.0, "keep_bias": 0.0}),
        ]
    jobs = []
    if "full" not in args.skip:
        jobs.append(("vA3C full", {}, True))
        jobs.append(("supervised (vA3C net, Warmup loss only)", {"run_class": SupervisedRun}, True))
    if "ablations" not in args.skip:
        jobs += [(name, cfg, False) for name, cfg in variants]
    if args.jobs <= 1:
        for name, cfg, full in jobs:
            pol, tr = _train(env_kwargs, args.seed, budget(full), progress, **cfg)
            add(name, pol, tr, budget_label(full))
    else:
        # CPU-time budgets keep the comparison fair when runs share the machine
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        specs = [dict(name=name, config=cfg, budget=budget(full), budget_label=budget_label(full), seed=args.seed,
                      env_kwargs=env_kwargs, episodes=args.episodes, eval_seed=args.eval_seed, threads=args.threads)
                 for name, cfg, full in jobs]
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as ex:
            for r in ex.map(_train_and_evaluate, specs):
                rows.append(r)
                print(f"  {r['name']:45s} Dice {r['dice']:.4f} ± {r['ci95']:.4f}", flush=True)

    thr = []
    if "throughput" not in args.skip:
        for w in (0, 1, 2):
            v, n = _throughput(env_kwargs, w, args.throughput_seconds, args.threads)
            thr.append({"mode": "sync (batched)" if w == 0 else f"async, {w} worker{'s' if w > 1 else ''}",
                        "voxel_updates_per_s": v, "updates": n})
            print(f"  throughput {thr[-1]['mode']:20s} {v:,.0f} voxel-agent updates/s ({n} updates)", flush=True)

    total = (time.perf_counter() - t_start) / 60
    md = _markdown(rows, thr, args, total, DEFAULT_CONFIG)
    print()
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "throughput": thr, "args": vars(args)}, indent=2,
                                              default=float))
    return 0


def _markdown(rows, thr, args, total_min, cfg) -> str:
    base = {r["name"]: r["dice"] for r in rows}
    ann = base.get("noisy annotation (identity)", float("nan"))
    maj = base.get("majority filter 3x3x3 of the annotation", float("nan"))
    lines = [
        f"vA3C on SVLDRL-v0 phantoms (default noise), {args.patch_size}^3 patches; mean Dice vs truth on "
        f"{args.episodes} held-out episodes (seeds {args.eval_seed}+), ± 95 % CI; {args.threads} torch threads; "
        f"{platform.processor() or platform.machine()}; benchmark wall time {total_min:.0f} min.",
        "",
        "| policy | training budget | updates | train wall / CPU (min) | Dice vs truth | Δ vs annotation "
        "| Δ vs majority |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tr = f"{r['wall_min']:.1f} / {r['cpu_min']:.1f}" if "wall_min" in r else "-"
        lines.append(f"| {r['name'].strip()} | {r['budget']} | {r.get('updates', '-')} | {tr} | "
                     f"{r['dice']:.4f} ± {r['ci95']:.4f} | {r['dice'] - ann:+.4f} | {r['dice'] - maj:+.4f} |")
    if thr:
        lines += ["", "| mode | voxel-agent updates / s (RL stage) | updates |", "|---|---:|---:|"]
        for t in thr:
            lines.append(f"| {t['mode']} | {t['voxel_updates_per_s']:,.0f} | {t['updates']} |")
    keys = ("backbone", "width", "depth", "num_envs", "lr", "warmup_frac", "value_frac", "warmup_reuse", "gamma")
    lines += ["", "vA3C config: " + ", ".join(f"{k}={cfg[k]}" for k in keys) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
