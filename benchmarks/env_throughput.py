"""Environment throughput: the native batched vector env vs Gymnasium's SyncVectorEnv.

Both run the same work: N environments, random label actions (drawn before timing), full
episodes of ``max_steps`` with NEXT_STEP autoreset (so resets -- phantom generation and
noise -- are included in the cost). Prints voxel-steps/s, their ratio, the fraction of this
machine's memory bandwidth a native step reaches (bandwidth measured in the same run by a
plain tensor copy of the bytes a step must touch), and the peak memory of each run.

    python benchmarks/env_throughput.py [--envs 16] [--sizes 16 32 64] [--steps 20] [--repeats 3]

Native and sync runs alternate ``--repeats`` times, each in a fresh process; the table gives
medians and the range of the per-pair ratios. (On a shared 2-core machine the speed of the
same run drifts by +-15 % from minute to minute, enough to move a single pair's ratio from
4.5x to 6.4x.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np
import torch

# Bytes a label step must touch per voxel: int64 action in; image, mask, annotation and
# target read; the 6-channel float32 observation and the float32 reward map written.
BYTES_PER_VOXEL = 8 + 4 * 4 + 4 * 6 + 4


def _time_steps(env, actions, steps: int) -> float:
    env.reset(seed=0)
    env.step(actions[0])  # warm-up: first-call allocations
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % len(actions)])
    return time.perf_counter() - t0


def _run(kind: str, n: int, size: int, steps: int, queue) -> None:
    import gymnasium as gym

    import svl_env  # noqa: F401  (registers SVLDRL-v0)

    torch.set_num_threads(torch.get_num_threads())
    shape = (size, size, size)
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 4, size=(n, *shape), dtype=np.int64) for _ in range(4)]
    if kind == "native":
        env = gym.make_vec("SVLDRL-v0", num_envs=n, patch_size=size, vectorization_mode="vector_entry_point")
    else:
        env = gym.make_vec("SVLDRL-v0", num_envs=n, patch_size=size, vectorization_mode="sync")
    seconds = _time_steps(env, actions, steps)
    env.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((seconds, peak_mb))


def _measure(kind: str, n: int, size: int, steps: int) -> tuple[float, float]:
    """Each run in a fresh process so that its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(kind, n, size, steps, q))
    p.start()
    out = q.get()
    p.join()
    return out


def copy_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Bytes/s of a plain tensor copy (read + write counted), best of ``repeats``."""
    src = torch.empty(max(nbytes // 4, 1), dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (max_steps=5: 4 autoresets)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating native / sync pairs per size")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    rows = []
    for size in args.sizes:
        voxels = args.envs * size ** 3
        t_nat, t_syn, mem_nat, mem_syn = [], [], 0.0, 0.0
        for _ in range(args.repeats):  # alternate, so that a drift of the machine hits both sides
            t, m = _measure("native", args.envs, size, args.steps)
            t_nat.append(t)
            mem_nat = max(mem_nat, m)
            t, m = _measure("sync", args.envs, size, args.steps)
            t_syn.append(t)
            mem_syn = max(mem_syn, m)
        ratios = np.asarray(t_syn) / np.asarray(t_nat)
        vps_nat = voxels * args.steps / float(np.median(t_nat))
        vps_syn = voxels * args.steps / float(np.median(t_syn))
        bw = copy_bandwidth(voxels * BYTES_PER_VOXEL)
        frac = BYTES_PER_VOXEL * vps_nat / bw
        rows.append((size, vps_nat, vps_syn, float(np.median(ratios)), ratios.min(), ratios.max(), frac, bw,
                     mem_nat, mem_syn))

    print(f"\nSVLDRL-v0 throughput, {args.envs} envs, {args.steps} steps (resets included), "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats} alternating runs\n")
    print("| patch | native voxel-steps/s | SyncVectorEnv voxel-steps/s | speed-up (range) | bandwidth used | "
          "copy bandwidth | peak RSS native | peak RSS sync |")
    print("|---|---|---|---|---|---|---|---|")
    for size, vn, vs, ratio, lo, hi, frac, bw, mn, ms in rows:
        print(f"| {size}³ | {vn:,.0f} | {vs:,.0f} | {ratio:.1f}x ({lo:.1f}-{hi:.1f}) | {100 * frac:.1f} % | "
              f"{bw / 1e9:.1f} GB/s | {mn:,.0f} MB | {ms:,.0f} MB |")
    print(f"\nbandwidth used = ({BYTES_PER_VOXEL} bytes/voxel a step must touch x voxel-steps/s) / copy bandwidth")


if __name__ == "__main__":
    main()
