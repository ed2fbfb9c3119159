"""vA3C's learner: fp32 vs bf16 (and memory layouts), the split of a whole update, the share of
the machine's bf16 matrix peak, and Dice at equal updates -- measured side by side in one run.

    python benchmarks/learner_speed.py [--repeats 7] [--dice-updates 40] [--dice-seeds 0 1]

Sections of the printed Markdown:

1. **Network step** -- vA3C's default network (``DEFAULT_CONFIG``: U-Net width 8, depth 3) on
   ``num_envs`` x 32^3 patches (8: the default; 2: the quick preset), one forward + backward
   (Warmup's supervised loss) + Adam step per timing. Modes alternate within every repeat (so
   all see the same load on a shared machine); the table gives medians. The FLOPs of a step come
   from ``torch.utils.flop_counter``; the share of the peak divides the step's FLOP/s by that of
   a large bf16 matmul timed in the same run.
2. **Whole update** -- real ``Learner.update`` calls (a Warmup and a policy-stage update, on
   ``--update-envs`` environments: 8 = ``DEFAULT_CONFIG``, 2 = the quick preset)
   with the time split into rollout inference (no-grad forwards), forwards with grad, env steps,
   losses, backward and the optimiser; voxel-agent updates/s as the learner reports them.
3. **Dice at equal updates** -- vA3C trained for ``--dice-updates`` updates (quick preset,
   2 envs) from the same seeds in fp32 and bf16, scored on the same evaluation episodes.

4. **torch.compile** (``--sections compile``, not run by default) -- the default network compiled
   by inductor against eager: compile time and step time.

Where CUDA is available the network step and the peak also run on the GPU (rows ``cuda``);
elsewhere the output says that those rows are missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from agents.common.precision import autocast, native_bf16
from agents.va3c.config import DEFAULT_CONFIG
from agents.va3c.losses import supervised_loss
from agents.va3c.model import _init_net
from svl_env import EnvConfig

CL = torch.channels_last_3d


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- 1. the network step
class NetStep:
    """One forward + backward + Adam step of the default vA3C network in one mode."""

    def __init__(self, precision: str, layout: str, batch: int, patch: int, device):
        env = EnvConfig()
        n_ch, n_act = env.num_channels, env.num_actions
        self.net = _init_net(dict(DEFAULT_CONFIG), n_ch, n_act, seed=0).to(device)
        fmt = CL if layout == "channels_last_3d" else torch.contiguous_format
        self.net = self.net.to(memory_format=fmt)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4, foreach=False)
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(batch, n_ch, patch, patch, patch, generator=g).to(device).contiguous(memory_format=fmt)
        shape = (batch, patch, patch, patch)
        self.mask = (torch.rand(shape, generator=g) > 0.5).float().to(device)
        self.target = (torch.rand(shape, generator=g) > 0.5).float().to(device)
        self.precision, self.device = precision, torch.device(device)

    def loss(self):
        with autocast(self.precision, self.device):
            logits, value, _ = self.net(self.x)
        return supervised_loss(logits.float(), self.mask, self.target)[0] + value.float().square().mean()

    def __call__(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()
        _sync(self.device)
        return time.perf_counter() - t0

    def flops(self) -> float:
        """Forward + backward FLOPs of one step (convolutions and matmuls)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            self.net.zero_grad(set_to_none=True)
            with autocast(self.precision, self.device):
                logits, value, _ = self.net(self.x)
            (supervised_loss(logits.float(), self.mask, self.target)[0] + value.float().square().mean()).backward()
        return float(fc.get_total_flops())


def matmul_peak(dtype, device, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a large square matmul (the machine's matrix peak in ``dtype``), best of ``reps``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def network_rows(device, batches, repeats: int, layouts) -> list[dict]:
    modes = [(p, lay) for lay in layouts for p in ("fp32", "bf16")]
    rows = []
    peak = matmul_peak(torch.bfloat16, device)
    peak32 = matmul_peak(torch.float32, device)
    for batch in batches:
        steps = {m: NetStep(*m, batch=batch, patch=32, device=device) for m in modes}
        flops = steps[modes[0]].flops()
        for s in steps.values():  # first calls: allocations, oneDNN primitive creation
            s()
            s()
        times: dict = {m: [] for m in modes}
        for _ in range(repeats):
            for m in modes:  # interleaved: every mode sees the same load
                times[m].append(steps[m]())
        base = statistics.median(times[("fp32", layouts[0])])
        for m in modes:
            t = statistics.median(times[m])
            rows.append({"device": torch.device(device).type, "batch": batch, "precision": m[0], "layout": m[1],
                         "ms": 1e3 * t, "speedup": base / t, "voxel_updates_per_s": batch * 32 ** 3 / t,
                         "tflops": flops / t / 1e12, "peak_share": flops / t / peak,
                         "spread": (1e3 * min(times[m]), 1e3 * max(times[m]))})
    for r in rows:
        r["peak_tflops"], r["peak32_tflops"] = peak / 1e12, peak32 / 1e12
    return rows


# --------------------------------------------------------------------------- 2. the whole update
PARTS = ("rollout inference", "forward (grad)", "env step", "loss", "backward", "optimiser", "other")


class _Timer:
    def __init__(self):
        self.s = dict.fromkeys(PARTS, 0.0)

    def wrap(self, fn, part=None):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                key = part or ("forward (grad)" if torch.is_grad_enabled() else "rollout inference")
                self.s[key] += time.perf_counter() - t0
        return timed


def update_split(precision: str, num_envs: int, stage: str, repeats: int, seed: int = 0) -> dict:
    """Median seconds per part of ``repeats`` vA3C updates of ``stage`` (warmup or policy)."""
    import agents.va3c.learner as L
    from agents.common.budget import Budget, update_seed
    from agents.va3c.run import VA3CRun

    run = VA3CRun({"patch_size": 32}, budget=Budget(updates=1), seed=seed,
                  config={"num_envs": num_envs, "precision": precision})
    env = L.make_env(run.env, num_envs, True)
    learner = L.Learner(run.model, run.opt, env, run.cfg)
    progress = 0.0 if stage == "warmup" else 0.9
    per, vups = [], []
    saved = L.supervised_loss, L.a2c_segment_loss
    try:
        for r in range(repeats + 1):
            t = _Timer()
            learner._forward = t.wrap(L.Learner._forward.__get__(learner))
            env.step = t.wrap(type(env).step.__get__(env), "env step")
            L.supervised_loss, L.a2c_segment_loss = (t.wrap(f, "loss") for f in saved)
            opt_step = t.wrap(type(run.opt).step.__get__(run.opt), "optimiser")
            run.opt.step = opt_step
            inner = L.Learner._step.__get__(learner)
            t_step = _Timer()
            learner._step = t_step.wrap(inner, "backward")
            t0 = time.perf_counter()
            m = learner.update(r, progress, update_seed(seed, r))
            total = time.perf_counter() - t0
            t.s["backward"] = t_step.s["backward"] - t.s["optimiser"]  # _step = zero_grad + backward + clip + step
            t.s["other"] = total - sum(v for k, v in t.s.items() if k != "other")
            if r:  # the first update warms up allocations
                per.append({**t.s, "total": total})
                vups.append(m["voxel_updates_per_s"])
    finally:
        L.supervised_loss, L.a2c_segment_loss = saved
        env.close()
    med = {k: statistics.median(p[k] for p in per) for k in (*PARTS, "total")}
    med["voxel_updates_per_s"] = statistics.median(vups)
    return med


# --------------------------------------------------------------------------- 3. Dice at equal updates
def dice_after(precision: str, seed: int, updates: int, episodes: int) -> float:
    from agents.eval.episodes import run_episodes
    from agents.va3c.train import train_va3c

    env = {"patch_size": 32}
    pol = train_va3c(env, updates=updates, seed=seed, progress=False, num_envs=2, precision=precision)
    recs, _ = run_episodes(pol, env, episodes, 50_000, batch_size=8, progress=False)
    return float(np.mean([r["dice"] for r in recs]))


# --------------------------------------------------------------------------- report
SECTIONS = ("network", "update", "dice", "compile")
#: what runs without --sections: "compile" takes minutes of compiling and is asked for by name
DEFAULT_SECTIONS = ("network", "update", "dice")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed steps per mode (medians are reported)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 2],
                    help="patches per network step (8: DEFAULT_CONFIG num_envs; 2: the quick preset)")
    ap.add_argument("--update-envs", type=int, nargs="+", default=[8, 2],
                    help="envs per whole update (8: DEFAULT_CONFIG; 2: the quick preset)")
    ap.add_argument("--update-repeats", type=int, default=3, help="timed whole updates per precision and stage")
    ap.add_argument("--dice-updates", type=int, default=40, help="vA3C updates before scoring Dice (0: skip)")
    ap.add_argument("--dice-seeds", type=int, nargs="+", default=[0, 1], help="training seeds of the Dice rows")
    ap.add_argument("--episodes", type=int, default=16, help="evaluation episodes of the Dice rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS),
                    help=f"which sections to run (default: {' '.join(DEFAULT_SECTIONS)}; compile: torch.compile "
                         "of the network, its compile time and step time against eager, bf16)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    def emit(*lines: str) -> None:  # section by section: a long run shows its numbers as they come
        print("\n".join(lines), flush=True)

    emit(*[f"## vA3C learner speed ({platform.processor() or platform.machine()}, {args.threads} threads, "
           f"torch {torch.__version__}, load average {load:.2f} at the start)", "",
           f"Native bf16 on the CPU: {native_bf16('cpu')}. Medians of {args.repeats} interleaved steps.", ""])

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "network" in args.sections:
        network_section(devices, args, emit)
    if "update" in args.sections:
        update_section(args, emit)
    if "dice" in args.sections and args.dice_updates > 0:
        dice_section(args, emit)
    if "compile" in args.sections:
        compile_section(args, emit)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    emit(f"\nLoad average at the end: {load_end:.2f}.")
    return 0


def network_section(devices, args, emit) -> None:
    rows = []
    for dev in devices:
        rows += network_rows(dev, args.batches, args.repeats, ["contiguous", "channels_last_3d"])
    out = ["### Network step (forward + backward + Adam, U-Net width 8 depth 3, 32^3 patches)", "",
            "| device | patches | precision | layout | ms/step | vs fp32 | voxel-agent updates/s | TFLOP/s "
            "| share of bf16 matmul peak |", "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['device']} | {r['batch']} | {r['precision']} | {r['layout']} | {r['ms']:.0f} "
                   f"({r['spread'][0]:.0f}-{r['spread'][1]:.0f}) | {r['speedup']:.2f}x | "
                   f"{r['voxel_updates_per_s'] / 1e6:.2f} M | {r['tflops']:.3f} | {100 * r['peak_share']:.1f} % |")
    for dev in devices:
        r = next(x for x in rows if x["device"] == dev)
        out.append(f"\nMatmul peak ({dev}, 2048^2): bf16 {r['peak_tflops']:.2f} TFLOP/s, "
                   f"fp32 {r['peak32_tflops']:.2f} TFLOP/s.")
    if "cuda" not in devices:
        out.append("\nCUDA: not available on this machine -- the cuda rows are added where it is.")
    emit(*out)



def update_section(args, emit) -> None:
    out = ["", "### Whole update, split (32^3 patches; median seconds per update)", "",
           "| envs | stage | precision | " + " | ".join(PARTS) + " | total | vs fp32 | voxel-agent updates/s |",
           "|---:|---|---|" + "---:|" * (len(PARTS) + 3)]
    for envs in args.update_envs:
        for stage in ("warmup", "policy"):
            split = {prec: update_split(prec, envs, stage, args.update_repeats) for prec in ("fp32", "bf16")}
            for prec, s in split.items():
                ratio = split["fp32"]["total"] / s["total"]
                out.append(f"| {envs} | {stage} | {prec} | " + " | ".join(f"{s[p]:.3f}" for p in PARTS)
                           + f" | {s['total']:.3f} | {ratio:.2f}x | {s['voxel_updates_per_s'] / 1e6:.2f} M |")
    emit(*out)


def dice_section(args, emit) -> None:
    out = ["", f"### Dice after {args.dice_updates} updates (quick preset, {args.episodes} evaluation "
               "episodes, same seeds)", "", "| precision | " + " | ".join(f"seed {s}" for s in args.dice_seeds)
           + " | mean | spread (max - min) |", "|---|" + "---:|" * (len(args.dice_seeds) + 2)]
    dice = {p: {} for p in ("fp32", "bf16")}
    for seed in args.dice_seeds:  # interleaved too: fp32 and bf16 runs of a seed back to back
        for prec in dice:
            dice[prec][seed] = dice_after(prec, seed, args.dice_updates, args.episodes)
    for prec, d in dice.items():
        v = list(d.values())
        out.append(f"| {prec} | " + " | ".join(f"{x:.4f}" for x in v)
                   + f" | {np.mean(v):.4f} | {max(v) - min(v):.4f} |")
    diff = [dice["bf16"][s] - dice["fp32"][s] for s in args.dice_seeds]
    out.append(f"\nbf16 - fp32, same seed: {', '.join(f'{d:+.4f}' for d in diff)} "
               f"(mean {np.mean(diff):+.4f}).")
    emit(*out)

def compile_section(args, emit) -> None:
    """``torch.compile`` (inductor) of the default network against eager, both under bf16 autocast:
    the first step (compile included) and the median of the next ``--repeats`` steps."""
    out = ["", f"### torch.compile (8 x 32^3 patches, bf16, {args.threads} threads)", "",
           "| mode | first step (s, compile included) | median step (ms) | steps to repay the compile |",
           "|---|---:|---:|---:|"]
    res = {}
    for mode in ("eager", "compile"):
        step = NetStep("bf16", "contiguous", 8, 32, "cpu")
        if mode == "compile":
            step.net = torch.compile(step.net)
        first = step()
        res[mode] = (first, statistics.median(step() for _ in range(args.repeats)))
    for mode, (first, med) in res.items():
        gain = res["eager"][1] - med
        repay = (first - res["eager"][0]) / gain if mode == "compile" and gain > 0 else float("nan")
        out.append(f"| {mode} | {first:.1f} | {1000 * med:.0f} | "
                   + ("never (slower per step)" if mode == "compile" and gain <= 0 else
                      "-" if mode == "eager" else f"{repay:.0f}") + " |")
    emit(*out)


if __name__ == "__main__":
    raise SystemExit(main())
