"""Train voxel-PPO (agents/voxel_ppo.py) for about a minute and score it against the annotation.

voxel-PPO is the worked example of "plug in your own agent": one readable file (hyper-parameters,
rollout on the native vector env, per-voxel GAE from ``info["reward_map"]``, per-voxel PPO-clip)
plus one ``register_agent`` line in agents/registry.py. Copy the file, change the loss, register
it under a new name, and ``svl-drl train/evaluate/refine/benchmark`` take it like the built-ins.

Run::

    python examples/voxel_ppo.py                 # 16^3 patches, ~1 CPU-minute of training
    python examples/voxel_ppo.py --patch-size 32 --cpu-minutes 5 --out runs/vppo

Then ``svl-drl evaluate --checkpoint runs/vppo`` or ``svl-drl benchmark --agents identity,voxel-ppo
--checkpoint voxel-ppo=runs/vppo``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from agents.eval.episodes import run_episodes
from agents.heuristics import IdentityPolicy
from agents.voxel_ppo import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--cpu-minutes", type=float, default=1.0, help="training budget (CPU time of this process)")
    ap.add_argument("--episodes", type=int, default=16, help="held-out evaluation episodes")
    ap.add_argument("--out", default=None, help="run folder (checkpoint.pt, config.json, metrics.csv)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    env_kwargs = {"patch_size": args.patch_size}
    policy = train(env_kwargs=env_kwargs, seed=0, out=args.out, progress=True, cpu_minutes=args.cpu_minutes)
    for pol in (IdentityPolicy(), policy):
        # held-out seeds: training resets use seeds drawn from (seed, update), evaluation 10_000 + i
        records, _ = run_episodes(pol, env_kwargs, args.episodes, 10_000, progress=False)
        dice = np.array([r["dice"] for r in records])
        print(f"{pol.name:12s} Dice vs truth {dice.mean():.3f} ± {1.96 * dice.std(ddof=1) / np.sqrt(len(dice)):.3f} "
              f"({args.episodes} episodes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
