"""A documented hyper-parameter search for SB3 PPO (or A2C) on the quick benchmark's episodes.

Each configuration is trained from scratch, one at a time in this process, for a CPU-time budget
(``--cpu-minutes``; the quick preset gives PPO 3), on the benchmark's training seed, then scored
with ``agents.eval.episodes.run_episodes`` on the benchmark's seeded evaluation episodes (32
phantom patches of 32^3, default noise, episode i = seed i) beside ``identity`` (the annotation
unchanged). The per-case rows of every configuration go into one ``per_case.csv`` and the table
comes from ``agents.eval.leaderboard.leaderboard_from_per_case``, as in ``svl-drl benchmark``.

Besides Dice, the table shows whether the policy moved at all: PPO's ``approx_kl`` and
``clip_fraction`` (mean over updates, from the run's ``metrics.csv``), the keep margin at the end
(mean over voxels of logit(keep) minus the largest other logit, on the last rollout's
observations: 4.0 at initialisation with ``keep_bias=4``) and the fraction of voxels whose
deterministic first-step action is not "keep" on the evaluation episodes (0 = the identity).

    python benchmarks/sb3_search.py --cpu-minutes 1.5                 # every configuration
    python benchmarks/sb3_search.py --cpu-minutes 3 --configs lr3e-3_ent0
    python benchmarks/sb3_search.py --cpu-minutes 3 --configs lr3e-3_ent0 --train-seeds 1,2   # more seeds

Results are cached per (configuration, budget, training seed) in ``--out``: rerunning skips what
is done, so a search can be extended a configuration at a time. The Markdown table is printed and
written to ``--table`` (default ``benchmarks/results/sb3_search.md``) for every row in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the quick benchmark's environment (``svl-drl benchmark --quick``: patch 32, default noise)
ENV = dict(data="phantom", patch_size=32, noise=None, noise_ratio=1.0, max_steps=5, device="cpu")

#: (name, why, trainer options on top of the defaults of ``agents.sb3.train``) -- PPO.
#: The defaults: lr 3e-4, ent_coef 0.01, n_steps 5, batch_size 20, n_epochs 2, gamma 0.95,
#: keep_bias 4, 8 envs, advantages normalised per minibatch, rewards as the env gives them.
PPO_CONFIGS = [
    ("defaults", "the current defaults", {}),
    ("lr3e-3", "10x the learning rate: 3e-4 moves the keep logit ~0.01 per update", dict(learning_rate=3e-3)),
    ("lr3e-3_ent0", "and no entropy bonus (it pulls the keep logit down, towards uniform)",
     dict(learning_rate=3e-3, ent_coef=0.0)),
    ("lr3e-2_ent0", "voxel-PPO's learning rate", dict(learning_rate=3e-2, ent_coef=0.0)),
    ("lr3e-3_ent0_kb2", "keep bias 2: p(keep) 0.71 instead of 0.95, a smaller margin to overturn",
     dict(learning_rate=3e-3, ent_coef=0.0, keep_bias=2.0)),
    ("lr3e-3_ent0_bs5", "minibatches of 5: 4x the Adam steps per update", dict(learning_rate=3e-3, ent_coef=0.0,
                                                                                batch_size=5)),
    ("lr3e-3_ent0_ns1", "n_steps 1: an update every env step (5x the updates)",
     dict(learning_rate=3e-3, ent_coef=0.0, n_steps=1, batch_size=8)),
    ("lr3e-3_ent0_env4", "4 envs per update (2x the updates)", dict(learning_rate=3e-3, ent_coef=0.0, num_envs=4)),
    ("lr3e-3_ent0_ep4", "4 epochs per rollout", dict(learning_rate=3e-3, ent_coef=0.0, n_epochs=4)),
    ("lr3e-3_ent0_normrew", "rewards / running std of the return (svl_env.wrappers.VectorNormalizeReward)",
     dict(learning_rate=3e-3, ent_coef=0.0, normalize_reward=True)),
    ("lr3e-3_ent0_rs10_rawadv", "rewards x10, advantages not normalised",
     dict(learning_rate=3e-3, ent_coef=0.0, reward_scale=10.0, normalize_advantage=False)),
    ("lr1e-2_ent0_kb2_bs5", "the aggressive corner: lr 1e-2, keep bias 2, minibatches of 5",
     dict(learning_rate=1e-2, ent_coef=0.0, keep_bias=2.0, batch_size=5)),
    # added after the rows above: the value loss (returns ~ -2.5, MSE ~1) drives the shared backbone,
    # while the per-voxel-mean policy loss is ~1e-6 -- lighten the value loss
    ("lr3e-3_ent0_vf0.05", "value loss 10x lighter (vf_coef 0.05) on the shared backbone",
     dict(learning_rate=3e-3, ent_coef=0.0, vf_coef=0.05)),
    ("lr3e-3_ent0_rs0.1", "rewards x0.1: the value loss 100x lighter, the (normalised) advantages unchanged",
     dict(learning_rate=3e-3, ent_coef=0.0, reward_scale=0.1)),
]
#: A2C: not searched by default (``--algo a2c`` runs these).
A2C_CONFIGS = [
    ("defaults", "the current defaults (lr 7e-4, ent 0.01, n_steps 5, advantages not normalised)", {}),
    ("lr3e-3_ent0_normadv", "lr 3e-3, no entropy bonus, advantages normalised",
     dict(learning_rate=3e-3, ent_coef=0.0, normalize_advantage=True)),
]
CONFIGS = {"ppo": PPO_CONFIGS, "a2c": A2C_CONFIGS}
TRAIN_SEED_OFFSET = 100_000  # agents.eval.benchmark.TRAIN_SEED_OFFSET (checked in main)


def diagnostics_callback():
    """An SB3 callback that logs, after each rollout, the keep margin and the advantages' scale
    (``diag/*`` columns of metrics.csv)."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    class Diagnostics(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            buf, pol, rec = self.model.rollout_buffer, self.model.policy, self.logger.record
            rec("diag/reward_mean", float(buf.rewards.mean()))
            rec("diag/reward_std", float(buf.rewards.std()))
            rec("diag/advantage_std", float(buf.advantages.std()))
            with torch.no_grad():
                obs = torch.as_tensor(np.asarray(buf.observations[-1]), dtype=torch.float32, device=pol.device)
                logits = pol.action_net(pol.features_extractor(obs)).float()
                margin = logits[:, 0] - logits[:, 1:].max(1).values
                rec("diag/keep_margin", float(margin.mean()))
                rec("diag/p_keep", float(logits.softmax(1)[:, 0].mean()))

    return Diagnostics()


def _mean_col(rows: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return float(np.mean(vals)) if vals else math.nan


def _last_col(rows: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return vals[-1] if vals else math.nan


def non_keep_fraction(policy, env_cfg, seed: int, n: int = 8) -> float:
    """Fraction of voxels whose deterministic first action is not "keep" on episodes seed..seed+n-1."""
    from gymnasium.vector import AutoresetMode

    from svl_env import EnvConfig, SVLDRLVectorEnv

    env = SVLDRLVectorEnv(n, config=EnvConfig.from_any(env_cfg).replace(autoreset_mode=AutoresetMode.DISABLED))
    obs, info = env.reset(seed=[seed + i for i in range(n)])
    a = policy.act(obs, info, deterministic=True)
    env.close()
    return float((np.asarray(a) != 0).mean())


def run_one(algo: str, name: str, options: dict, *, minutes: float, train_seed: int, folder: Path, eval_env,
            episodes: int, seed: int, progress: bool) -> dict:
    """Train one configuration, score it; writes folder/records.csv and folder/result.json."""
    from agents.eval import benchmark as B
    from agents.eval import episodes as E

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pol = B.train_learned(algo, ENV, minutes, train_seed, folder / "run", progress,
                          config={**options, "callbacks": [diagnostics_callback()]}, clock="cpu")
    train_s = time.perf_counter() - t0
    pol.name = label(algo, name, minutes, train_seed)
    recs, _ = E.run_episodes(pol, eval_env, episodes, seed, progress=progress)
    E.write_per_case_csv(recs, folder / "records.csv")
    with open(folder / "run" / "metrics.csv", newline="") as fh:
        m = list(csv.DictReader(fh))
    result = dict(algo=algo, config=name, options=options, cpu_minutes=minutes, train_seed=train_seed,
                  updates=len(m), approx_kl=_mean_col(m, "train/approx_kl"),
                  clip_fraction=_mean_col(m, "train/clip_fraction"), keep_margin=_last_col(m, "diag/keep_margin"),
                  non_keep=non_keep_fraction(pol, eval_env, seed), dice=float(np.mean([r["dice"] for r in recs])),
                  train_wall_s=round(train_s, 1))
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    return result


def label(algo: str, name: str, minutes: float, train_seed: int) -> str:
    return f"{algo} {name} ({minutes:g} CPU-min, seed {train_seed})"


def folder_for(out: Path, algo: str, name: str, minutes: float, train_seed: int) -> Path:
    return out / f"{algo}_{name}_{minutes:g}cpumin_seed{train_seed}"


def write_table(out: Path, table: Path, episodes: int, seed: int, commands: list[str]) -> str:
    """The Markdown table of every finished configuration in ``out`` (+ identity), from one per_case.csv."""
    from agents.eval import episodes as E
    from agents.eval.leaderboard import leaderboard_from_per_case

    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
    records = []
    for r in results:
        records += E.read_per_case_csv(folder_for(out, r["algo"], r["config"], r["cpu_minutes"], r["train_seed"])
                                       / "records.csv")
    records += E.read_per_case_csv(out / "identity" / "records.csv")
    per_case = E.write_per_case_csv(records, out / "per_case.csv")
    rows = {r["policy"]: r for r in leaderboard_from_per_case(per_case)}
    ident = rows["identity"]
    why = {(a, n): w for a, cfgs in CONFIGS.items() for n, w, _ in cfgs}
    lines = [
        f"# SB3 hyper-parameter search ({episodes} evaluation episodes, seeds {seed}..{seed + episodes - 1})",
        "",
        "Commands, in order: " + "; ".join(f"`{c}`" for c in commands) + ". "
        f"Environment: phantom, {ENV['patch_size']}^3 patches, default noise, 5 steps "
        "(the quick benchmark's at 32^3). Each row: one training run for the CPU budget, 1 torch thread, "
        f"scored with deterministic actions. identity (the annotation) scores {ident['dice_mean']:.3f} ± "
        f"{ident['dice_ci95']:.3f}. Dice: mean ± 95 % CI over episodes; Δ: mean Dice minus identity's; "
        "KL / clip: PPO's approx_kl and clip_fraction, mean over updates; margin: keep logit minus the "
        "largest other logit at the end (4.0 at init with keep_bias 4, 2.0 with keep_bias 2); ≠ keep: voxels "
        "whose deterministic first action is not keep.",
        "",
        "| algo | config | options (on top of the defaults) | CPU-min | train seed | updates | KL | clip | margin "
        "| ≠ keep | Dice | Δ vs identity |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(results, key=lambda r: (r["algo"], r["cpu_minutes"], r["train_seed"],
                                           [n for n, _, _ in CONFIGS[r["algo"]]].index(r["config"])
                                           if (r["algo"], r["config"]) in why else 99))
    for r in order:
        row = rows[label(r["algo"], r["config"], r["cpu_minutes"], r["train_seed"])]
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "—"
        lines.append(f"| {r['algo']} | {r['config']} | {opts} | {r['cpu_minutes']:g} | {r['train_seed']} | "
                     f"{r['updates']} | {r['approx_kl']:.1e} | {r['clip_fraction']:.3f} | {r['keep_margin']:.2f} | "
                     f"{r['non_keep']:.4f} | {row['dice_mean']:.3f} ± {row['dice_ci95']:.3f} | "
                     f"{row['dice_mean'] - ident['dice_mean']:+.3f} |")
    lines += ["", "Configurations:", ""]
    lines += [f"- {a} `{n}`: {w}" for (a, n), w in why.items()
              if any((r["algo"], r["config"]) == (a, n) for r in results)]
    lines += ["", f"Host: {platform.node()}, Python {platform.python_version()}, "
                  f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
    text = "\n".join(lines) + "\n"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=sorted(CONFIGS), default="ppo")
    p.add_argument("--configs", default=None,
                   help="comma-separated configuration names (default: all of --algo's): "
                        + "; ".join(f"{a}: " + ", ".join(n for n, _, _ in c) for a, c in CONFIGS.items()))
    p.add_argument("--cpu-minutes", type=float, default=3.0, help="training budget per run (quick preset: 3)")
    p.add_argument("--train-seeds", default="0",
                   help="comma-separated training runs k; run k trains on seed SEED + 100000 + k (the benchmark's)")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="evaluation episodes seed..seed+episodes-1")
    p.add_argument("--patch-size", type=int, default=ENV["patch_size"], help="patch edge (quick preset: 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="runs/sb3_search", help="run folders and cached results")
    p.add_argument("--table", default=str(ROOT / "benchmarks" / "results" / "sb3_search.md"))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from agents.eval import benchmark as B
    from agents.eval import episodes as E
    from agents.heuristics import make_heuristic

    assert B.TRAIN_SEED_OFFSET == TRAIN_SEED_OFFSET
    torch.set_num_threads(args.threads)
    ENV["patch_size"] = args.patch_size
    table = {n: (w, o) for n, w, o in CONFIGS[args.algo]}
    names = [c.strip() for c in args.configs.split(",")] if args.configs else list(table)
    bad = [n for n in names if n not in table]
    if bad:
        raise SystemExit(f"unknown {args.algo} configuration(s) {bad}; known: {', '.join(table)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    eval_env = E.memo_env_config(ENV)
    if not (out / "identity" / "records.csv").is_file():
        recs, _ = E.run_episodes(make_heuristic("identity"), eval_env, args.episodes, args.seed, progress=progress)
        (out / "identity").mkdir(exist_ok=True)
        E.write_per_case_csv(recs, out / "identity" / "records.csv")
    for k in [int(s) for s in args.train_seeds.split(",")]:
        train_seed = args.seed + TRAIN_SEED_OFFSET + k
        for name in names:
            folder = folder_for(out, args.algo, name, args.cpu_minutes, train_seed)
            if (folder / "result.json").is_file():
                print(f"{name} seed {train_seed}: cached")
                continue
            r = run_one(args.algo, name, table[name][1], minutes=args.cpu_minutes, train_seed=train_seed,
                        folder=folder, eval_env=eval_env, episodes=args.episodes, seed=args.seed, progress=progress)
            print(f"{name} seed {train_seed}: Dice {r['dice']:.3f}, {r['updates']} updates, "
                  f"keep margin {r['keep_margin']:.2f}, non-keep {r['non_keep']:.4f}", flush=True)
    command = "python benchmarks/sb3_search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    log = out / "commands.txt"
    commands = log.read_text().splitlines() if log.is_file() else []
    if command not in commands:
        log.write_text("\n".join(commands + [command]) + "\n")
        commands.append(command)
    print(write_table(out, Path(args.table), args.episodes, args.seed, commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
