"""Peak resident memory (RSS) of SB3 PPO on 32^3 volumes with the project's rollout settings.

Each configuration runs in a fresh Python process (peak RSS is per process), trains PPO for a
few updates with ``agents.sb3.train_sb3`` and reports ``ru_maxrss`` -- everything included:
interpreter, torch, the env, the rollout buffer, forward/backward of the 3D U-Net on a
minibatch. Target: under 4 GB for the defaults.

    python benchmarks/sb3_memory.py                 # ~1-3 minutes per configuration on 2 cores
    python benchmarks/sb3_memory.py --updates 1 --configs default

Also printed: the rollout buffer's size (observations float32 or float16; actions int8
thanks to the adapter's int8 ``MultiDiscrete``; int64 would be 8x the action part).

Measured on 2 busy CPU cores (SB3 2.9, torch 2.13), 1 update per row:

| config | n_steps | minibatch | obs dtype | action dtype | rollout buffer (MB) | peak RSS (MB) |
|---|---:|---:|---|---|---:|---:|
| default | 5 | 20 | float32 | int8 | 31.2 | 1297 |
| fp16-obs | 5 | 20 | float16 | int8 | 16.2 | 1352 |
| long-rollout | 20 | 20 | float32 | int8 | 125.0 | 1472 |
| batch40 | 5 | 40 | float32 | int8 | 31.2 | 2143 |

The peak is the minibatch's forward-backward through the 3D U-Net (~40 MB per sample), not
the buffer: float16 observations save 15 MB of buffer and cost as much in casts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# name -> (train_sb3 options, description)
CONFIGS = {
    "default": ({}, "project defaults: 8 envs x 5 steps, minibatch 20, 2 epochs, U-Net w16 d2, obs fp32"),
    "fp16-obs": ({"obs_dtype": "float16"}, "defaults, observations stored as float16"),
    "long-rollout": ({"n_steps": 20}, "defaults with 20-step rollouts (4 episodes per env; buffer x4)"),
    "batch40": ({"batch_size": 40}, "defaults with minibatch 40 (the whole rollout at once)"),
}

CHILD = r"""
import json, resource, sys, time
import numpy as np
from agents.sb3.train import train_sb3, DEFAULTS
opts = json.loads(sys.argv[1]); updates = int(sys.argv[2]); patch = int(sys.argv[3]); n_envs = int(sys.argv[4])
if "obs_dtype" in opts:
    opts["obs_dtype"] = getattr(np, opts["obs_dtype"])
n_steps = opts.get("n_steps", DEFAULTS["ppo"]["n_steps"])
t = time.perf_counter()
pol = train_sb3("ppo", {"patch_size": patch}, timesteps=updates * n_steps * n_envs, num_envs=n_envs, progress=False,
                **opts)
buf = pol.model.rollout_buffer
nbytes = buf.observations.nbytes + buf.actions.nbytes
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak_kb / 1024, "buffer_mb": nbytes / 2**20, "seconds": time.perf_counter() - t,
                  "action_dtype": str(buf.actions.dtype), "obs_dtype": str(buf.observations.dtype),
                  "batch_size": pol.model.batch_size, "n_steps": pol.model.n_steps}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated among {', '.join(CONFIGS)}")
    p.add_argument("--updates", type=int, default=1,
                   help="PPO updates per configuration (the peak is reached in the first)")
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--num-envs", type=int, default=8)
    args = p.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        print(f"sb3_memory: error: unknown config(s) {bad}; valid: {list(CONFIGS)}", file=sys.stderr)
        return 2
    print(f"PPO peak RSS, {args.patch_size}^3 patches, {args.num_envs} envs, {args.updates} updates per row")
    print("| config | n_steps | minibatch | obs dtype | action dtype | rollout buffer (MB) | peak RSS (MB) | "
          "wall (s) | < 4 GB |")
    print("|---|---:|---:|---|---|---:|---:|---:|:---:|")
    ok = True
    for name in names:
        opts, _ = CONFIGS[name]
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts), str(args.updates), str(args.patch_size),
                              str(args.num_envs)], capture_output=True, text=True)
        if res.returncode != 0:
            why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode
            print(f"| {name} | failed: {why} |")
            ok = False
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        under = r["peak_mb"] < 4096
        ok &= under
        print(f"| {name} | {r['n_steps']} | {r['batch_size']} | {r['obs_dtype']} | {r['action_dtype']} | "
              f"{r['buffer_mb']:.1f} | {r['peak_mb']:.0f} | {time.perf_counter() - t:.0f} | "
              f"{'yes' if under else 'NO'} |")
    for name in names:
        print(f"- {name}: {CONFIGS[name][1]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
