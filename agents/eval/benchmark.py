"""The policy leaderboard: every policy on the same seeded episodes, a table and pictures.

Python API (a researcher's own policy beside the built-ins)::

    from agents.eval import benchmark
    result = benchmark.run(policies=[MyPolicy()], agents=["identity", "intensity", "oracle"],
                           env_kwargs={"patch_size": 32}, episodes=32, seed=0, out="runs/bench")
    print(result["leaderboard_md"].read_text())

Files in ``out``:

    per_case.csv       one row per (policy, episode): Dice, IoU, HD95, ASD, continuity, ...
                       (``agents.eval.episodes.PER_CASE_FIELDS``) -- the source of every number
    curves.csv         Dice vs truth after each step of each episode (step 0 = annotation)
    leaderboard.csv    mean and 95% CI (Student t) per policy, computed FROM per_case.csv
    leaderboard.md     the same as a Markdown table (``leaderboard_from_per_case``)
    metrics.png        bars with 95% CIs: Dice, IoU, HD95, continuity, Dice gain
    dice_steps.png     mean Dice (95% CI band) after each step within an episode
    overlays/          slice overlays (image, annotation, truth, each policy's refined mask)
    benchmark.json     settings, training budgets and run folders, timings
    runs/<agent>/      training runs of the learned agents (checkpoints; reusable with
                       ``--checkpoint NAME=PATH``)

Fairness: episode i is the env reset with seed ``seed + i`` for every policy (same volume,
same noise). Learned agents listed without a checkpoint are trained first, each for its
budget of minutes (wall-clock, or CPU-minutes with ``clock="cpu"``), on training seeds ``seed + TRAIN_SEED_OFFSET + i`` -- disjoint
from the evaluation seeds. The oracle reads the truth and is labelled "oracle (upper bound)".
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import os
import platform
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from agents.eval import episodes as E
from agents.common.checkpoint import atomic_write
from agents.heuristics import HEURISTICS, ORACLE_NAME, make_heuristic

LEARNED = ("va3c", "ppo", "a2c")
BUILTIN = tuple(HEURISTICS) + LEARNED
DEFAULT_AGENTS = ("identity", "random", "majority", "opening", "closing", "intensity", "oracle") + LEARNED
LABELS = {"va3c": "vA3C", "ppo": "PPO (SB3)", "a2c": "A2C (SB3)"}
TRAIN_SEED_OFFSET = 100_000
#: ``--quick``: fits 15 minutes on 2 CPU cores, training included (README "Baselines and leaderboard").
#: Its budgets are CPU-minutes (2 busy cores spend 2 per minute), so that a machine shared with
#: other programs trains the same agents, only more slowly. Every learned agent gets the same
#: budget; vA3C updates on 2 environments at a time here (default 8): at a few CPU-minutes more,
#: noisier updates beat fewer, cleaner ones (7 CPU-min, 32 episodes: 8 envs 0.649, 4 envs
#: 0.775, 2 envs 0.803 Dice).
QUICK = dict(episodes=32, patch_size=32, train_minutes={"va3c": 7.0, "ppo": 7.0, "a2c": 7.0}, clock="cpu",
             overlays=3, train_config={"va3c": {"num_envs": 2}}, train_jobs=3)
#: what a training budget measures: "wall" (elapsed minutes) or "cpu" (CPU-minutes of the process)
CLOCKS = ("wall", "cpu")
#: leaderboard metrics: (per-case field, column title, higher is better?)
METRICS = (("dice", "Dice", True), ("iou", "IoU", True), ("hd95", "HD95 (mm)", False),
           ("continuity", "continuity", False), ("dice_gain", "Dice gain", True), ("seconds", "s / episode", False))


# ------------------------------------------------------------------- leaderboard
def leaderboard_from_per_case(path, confidence: float = 0.95) -> list[dict]:
    """Leaderboard rows from a per-case CSV: one dict per policy, best Dice first.

    Each row: ``policy``, ``n`` (episodes), ``rank``, and for every metric in ``METRICS``
    ``<m>_mean``, ``<m>_ci95`` (half-width of the ``confidence`` interval, Student t) and
    ``<m>_n`` (cases where it is defined: HD95 is undefined when one mask is empty).
    """
    records = E.read_per_case_csv(path)
    if not records:
        raise ValueError(f"{path}: no per-case rows")
    rows = []
    for pol in dict.fromkeys(r["policy"] for r in records):
        sel = [r for r in records if r["policy"] == pol]
        row = {"policy": pol, "n": len(sel)}
        for field, _, _ in METRICS:
            vals = [r[field] for r in sel]
            m, h = E.mean_ci(vals, confidence)
            row[f"{field}_mean"], row[f"{field}_ci95"] = m, h
            row[f"{field}_n"] = int(sum(1 for v in vals if not math.isnan(v)))
        rows.append(row)
    rows.sort(key=lambda r: -np.nan_to_num(r["dice_mean"], nan=-1.0))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def write_leaderboard(rows: list[dict], out_dir, *, title: str = "Leaderboard", notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """``leaderboard.csv`` and ``leaderboard.md`` in ``out_dir`` from ``leaderboard_from_per_case`` rows."""
    out_dir = Path(out_dir)
    fields = ["rank", "policy", "n"] + [f"{f}_{s}" for f, _, _ in METRICS for s in ("mean", "ci95", "n")]

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows({k: r[k] for k in fields} for r in rows)

    csv_path = atomic_write(out_dir / "leaderboard.csv", write_csv)
    md_path = atomic_write(out_dir / "leaderboard.md",
                           lambda tmp: Path(tmp).write_text(leaderboard_markdown(rows, title=title, notes=notes)))
    return csv_path, md_path


def _fmt(m: float, h: float, digits: int) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" if math.isnan(h) else f"{m:.{digits}f} ± {h:.{digits}f}"


def leaderboard_markdown(rows: list[dict], *, title: str = "Leaderboard", notes: Sequence[str] = ()) -> str:
    """A Markdown table (mean ± 95% CI) of leaderboard rows."""
    digits = {"dice": 3, "iou": 3, "hd95": 2, "continuity": 3, "dice_gain": 3, "seconds": 3}
    head = ["#", "policy"] + [t + (" ↑" if up else " ↓") for _, t, up in METRICS] + ["n"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---:", ":---"] + ["---:"] * (len(head) - 2)) + "|"]
    undefined = []
    for r in rows:
        cells = [str(r["rank"]), r["policy"]]
        for f, _, _ in METRICS:
            cell = _fmt(r[f"{f}_mean"], r[f"{f}_ci95"], digits[f])
            if r[f"{f}_n"] < r["n"]:
                cell += f" ({r[f'{f}_n']}/{r['n']})"
                undefined.append(f)
            cells.append(cell)
        cells.append(str(r["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± half-width of the 95% confidence interval (Student t) over episodes; "
                 "every policy ran on the same seeded episodes. Dice, IoU, HD95 against the truth; "
                 "continuity = C(f) of the reward (lower = fewer fragments, smoother surface); "
                 "Dice gain = Dice minus the annotation's Dice; s / episode = wall time of acting and stepping.")
    if undefined:
        lines.append("(k/n): the metric is defined on k of n episodes only (HD95 needs both masks non-empty).")
    lines += [f"{n}" for n in notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- plots
def plot_metrics(rows: list[dict], path) -> Path:
    """Horizontal bars with 95% CIs, one panel per metric (not s / episode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mets = [m for m in METRICS if m[0] != "seconds"]
    names = [r["policy"] for r in rows][::-1]
    fig, axes = plt.subplots(1, len(mets), figsize=(3.2 * len(mets), 0.45 * len(rows) + 1.6), sharey=True)
    colors = ["#999999" if n == ORACLE_NAME else "#2b7bba" for n in names]
    for ax, (f, title, up) in zip(axes, mets):
        mean = np.array([r[f"{f}_mean"] for r in rows][::-1], dtype=float)
        ci = np.nan_to_num(np.array([r[f"{f}_ci95"] for r in rows][::-1], dtype=float))
        ax.barh(np.arange(len(names)), np.nan_to_num(mean), xerr=ci, color=colors, capsize=3)
        ax.set_title(f"{title} ({'higher' if up else 'lower'} is better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if f == "dice_gain":
            ax.axvline(0, color="k", lw=0.8)
    axes[0].set_yticks(np.arange(len(names)), names)
    fig.suptitle(f"Policies on the same {rows[0]['n']} seeded episodes (mean, 95% CI)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def plot_dice_steps(curves: dict[str, np.ndarray], path) -> Path:
    """Left: mean Dice vs truth after each step (95% CI band; step 0 is the annotation).
    Right: the paired gain over the annotation (Dice_t - Dice_0), whose CI is free of the
    case-to-case spread that all policies share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # tab20's dark then light shades, greys left out: grey is the oracle's (dashed)
    tab = plt.get_cmap("tab20").colors
    palette = [tab[i] for i in list(range(0, 20, 2)) + list(range(1, 20, 2)) if i not in (14, 15)]
    others = [p for p in curves if p != ORACLE_NAME]
    for pol, c in curves.items():
        c = np.asarray(c, dtype=float)
        style = dict(ls="--", color="#777777") if pol == ORACLE_NAME else \
            dict(color=palette[others.index(pol) % len(palette)])
        for ax, data in zip(axes, (c, c - c[:, :1])):
            stats = [E.mean_ci(data[:, t]) for t in range(data.shape[1])]
            m = np.array([s[0] for s in stats])
            h = np.nan_to_num(np.array([s[1] for s in stats]))
            x = np.arange(data.shape[1])
            line, = ax.plot(x, m, marker="o", ms=3, label=pol, **style)
            ax.fill_between(x, m - h, m + h, alpha=0.1, color=line.get_color())
    axes[0].set_ylabel("Dice vs truth")
    axes[1].set_ylabel("Dice gain over the annotation")
    axes[1].axhline(0, color="k", lw=0.8)
    for ax in axes:
        ax.set_xlabel("step within the episode (0 = annotation)")
        ax.grid(alpha=0.3)
    fig.suptitle("Dice across the steps of an episode (mean, 95% CI)", fontsize=10)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def _dice(a, b) -> float:
    a, b = a > 0.5, b > 0.5
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def plot_overlay(case: dict[str, dict], episode: int, path) -> Path:
    """One case: image, annotation, truth and each policy's refined mask on the axial slice
    with the most truth. ``case``: {policy: {"image", "annotation", "truth", "mask"}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(case.values()))
    img, ann, tru = first["image"], first["annotation"], first["truth"]
    z = int(np.argmax(tru.reshape(tru.shape[0], -1).sum(1))) if tru.any() else tru.shape[0] // 2
    panels = [("image", None, None), ("annotation", ann, f"Dice {_dice(ann, tru):.3f}"), ("truth", tru, "")]
    panels += [(pol, d["mask"], f"Dice {_dice(d['mask'], tru):.3f}") for pol, d in case.items()
               if pol not in (ORACLE_NAME,)]
    ncol = min(6, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 2.9 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, m, sub) in zip(axes.ravel(), panels):
        ax.imshow(img[z], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if m is not None:
            colour = "#ff3030" if title == "truth" else ("#ffd700" if title == "annotation" else "#30e060")
            ax.imshow(np.ma.masked_where(m[z] < 0.5, m[z]), cmap=matplotlib.colors.ListedColormap([colour]),
                      alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
            ax.contour(tru[z], levels=[0.5], colors="#ff3030", linewidths=0.8)
        ax.set_title(title + (f"\n{sub}" if sub else ""), fontsize=8)
    fig.suptitle(f"episode {episode}, axial slice {z} (red contour = truth)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


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
    """A trained agent from a checkpoint: ``ppo``/``a2c`` from SB3 zips (pickles: trusted
    files only), ``va3c`` from the project's tensor-only checkpoint."""
    if name in ("ppo", "a2c"):
        from agents.sb3.train import load_sb3

        return load_sb3(path, device=device, algo=name, name=LABELS[name])
    if name == "va3c":
        from agents.va3c.run import VA3CPolicy

        pol = VA3CPolicy.load(path, device=device)
        _set_name(pol, LABELS["va3c"])
        return pol
    raise ValueError(f"--checkpoint applies to the learned agents {list(LEARNED)}, not {name!r}")


def _set_name(policy, name: str) -> None:
    try:
        policy.name = name
    except AttributeError:  # a read-only property: keep the policy's own name
        pass


def train_learned(name: str, env_kwargs: dict, minutes: float, seed: int, out: Path, progress: bool,
                  workers: int = 0, config: dict | None = None, clock: str = "wall"):
    """Train a learned agent for ``minutes`` of ``clock`` ("wall" or "cpu" minutes); its run
    folder is ``out``."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    config = dict(config or {})
    budget = {"cpu_minutes" if clock == "cpu" else "minutes": minutes}
    if name == "va3c":
        from agents.va3c.run import train_va3c

        pol = train_va3c(env_kwargs, seed=seed, workers=workers, out=out, progress=progress, **budget, **config)
    elif name in ("ppo", "a2c"):
        from agents.sb3.train import train_sb3

        pol = train_sb3(name, env_kwargs, seed=seed, out=out, progress=progress, **budget, **config)
    else:
        raise ValueError(f"{name!r} is not a learned agent ({list(LEARNED)})")
    _set_name(pol, LABELS[name])
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
    saved = Path(run_dir) / ("model.zip" if name in ("ppo", "a2c") else "checkpoint.pt")
    return str(saved), (time.perf_counter() - t0) / 60


def train_in_parallel(names: Sequence[str], env_kwargs: dict, budgets: dict, seed: int, out: Path, jobs: int,
                      workers: int = 0, train_config: dict | None = None, clock: str = "cpu",
                      progress: bool = True) -> dict[str, tuple[str, float]]:
    """Train the learned agents ``names`` in ``jobs`` processes at once -> {name: (file, minutes)}.

    Fair only with CPU-time budgets (``clock="cpu"``): each agent then gets the same compute,
    however the processes share the cores; each process gets ``cores // jobs`` torch threads.
    On a 2-core machine the learners (each about one busy core: small batches, a host-side
    component count per step) finish together instead of one after another.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    threads = max(1, (os.cpu_count() or 2) // jobs)
    # spawn: a forked child would inherit torch's thread pools and this process's locks
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {a: pool.submit(_train_job, a, env_kwargs, budgets[a], seed, str(out / "runs" / a), workers,
                                  (train_config or {}).get(a), clock, threads) for a in names}
        results = {}
        for a in tqdm(list(futures), desc=f"training ({jobs} at once)", unit="agent", disable=not progress):
            results[a] = futures[a].result()
    return results


def _policy_name(p) -> str:
    return str(getattr(p, "name", type(p).__name__))


# ------------------------------------------------------------------------- run
def run(policies: Sequence = (), *, agents: Sequence[str] | str | None = DEFAULT_AGENTS, env_kwargs: dict | None = None,
        episodes: int = 32, seed: int = 0, out="runs/benchmark", train_minutes: float | dict | None = None,
        checkpoints: dict | None = None, batch_size: int = 8, overlays: int = 3, progress: bool = True,
        workers: int = 0, train_config: dict | None = None, clock: str = "wall", train_jobs: int = 1) -> dict:
    """Benchmark built-in agents (``agents``) and policy objects (``policies``) on the same
    seeded episodes; write the files listed in the module doc into ``out``.

    Args:
        policies: extra policy objects (anything with ``act``; ``name`` labels it).
        agents: built-in names (``BUILTIN``), a list or a comma-separated string.
        env_kwargs: ``SVLDRLVectorEnv`` keyword arguments (need the truth: phantom default).
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

    Returns {"leaderboard": rows, "per_case_csv", "leaderboard_csv", "leaderboard_md",
    "metrics_png", "dice_steps_png", "overlays": [paths], "out"}.
    """
    t_start = time.perf_counter()
    env_kwargs = dict(env_kwargs or {})
    if isinstance(agents, str):
        agents = [a.strip() for a in agents.split(",") if a.strip()]
    agents = list(agents or [])
    unknown = [a for a in agents if a not in BUILTIN]
    if unknown:
        raise ValueError(f"unknown agent(s) {unknown}; built-in: {', '.join(BUILTIN)} (own policies: --custom)")
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if overlays < 0:
        raise ValueError(f"overlays must be >= 0, got {overlays}")
    checkpoints = dict(checkpoints or {})
    bad = [k for k in checkpoints if k not in LEARNED]
    if bad:
        raise ValueError(f"--checkpoint names must be learned agents {list(LEARNED)}, got {bad}")
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
    to_train = [a for a in agents if a in LEARNED and a not in checkpoints]
    budgets = _budgets(train_minutes, to_train)
    for p in policies:
        check_policy(p)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Fail on a bad environment before spending minutes on training; the evaluation env's
    # source remembers its volumes, so the policies after the first skip phantom generation.
    eval_kwargs = E.memo_env_kwargs(env_kwargs)
    if not eval_kwargs["data"].has_truth:
        raise ValueError("the benchmark scores against the truth: it needs phantoms or a folder with --labels clean")

    # ---- build the policy list (train first: evaluation then runs back to back)
    built, training = [], {}
    if train_jobs > 1 and len(to_train) > 1:
        trained = train_in_parallel(to_train, env_kwargs, budgets, seed + TRAIN_SEED_OFFSET, out,
                                    min(train_jobs, len(to_train)), workers=workers, train_config=train_config,
                                    clock=clock, progress=progress)
    else:
        trained = {}
    for a in agents:
        if a in LEARNED:
            if a in trained:
                path, used = trained[a]
                pol = load_learned(a, path, device=env_kwargs.get("device", "cpu"))
                training[LABELS[a]] = {"minutes_budget": budgets[a], "clock": clock, "minutes_used": round(used, 2),
                                       "run": str(out / "runs" / a), "trained_alongside": len(trained) - 1}
            elif a in checkpoints:
                pol = load_learned(a, checkpoints[a], device=env_kwargs.get("device", "cpu"))
                training[LABELS[a]] = {"checkpoint": str(checkpoints[a])}
            else:
                t0 = time.perf_counter()
                run_dir = out / "runs" / a
                pol = train_learned(a, env_kwargs, budgets[a], seed + TRAIN_SEED_OFFSET, run_dir, progress,
                                    workers=workers, config=(train_config or {}).get(a), clock=clock)
                training[LABELS[a]] = {"minutes_budget": budgets[a], "clock": clock,
                                       "minutes_used": round((time.perf_counter() - t0) / 60, 2),
                                       "run": str(run_dir)}
        else:
            pol = make_heuristic(a)
        built.append(pol)
    built += list(policies)
    names = [_policy_name(p) for p in built]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two policies share the name(s) {dup}; give each a distinct .name")
    if not built:
        raise ValueError("nothing to benchmark: give --agents and/or custom policies")

    # ---- evaluate every policy on the same episodes
    from tqdm.auto import tqdm

    records, curves, masks = [], {}, {}
    keep = list(range(min(episodes, max(4 * overlays, overlays))))
    t_eval = time.perf_counter()
    for pol, name in zip(tqdm(built, desc="benchmark", disable=not progress), names):
        sink: dict = {}
        recs, curve = E.run_episodes(pol, eval_kwargs, episodes, seed, batch_size=batch_size, progress=progress,
                                     desc=f"eval {name}", masks_sink=sink, mask_episodes=keep)
        records += recs
        curves[name] = curve
        masks[name] = sink
    eval_seconds = time.perf_counter() - t_eval

    per_case = E.write_per_case_csv(records, out / "per_case.csv")
    curves_csv = E.write_curves_csv(curves, out / "curves.csv")
    rows = leaderboard_from_per_case(per_case)
    notes = _notes(env_kwargs, episodes, seed, training)
    lb_csv, lb_md = write_leaderboard(rows, out, title=f"Leaderboard ({episodes} episodes, seed {seed})", notes=notes)
    metrics_png = plot_metrics(rows, out / "metrics.png")
    steps_png = plot_dice_steps(E.read_curves_csv(curves_csv), out / "dice_steps.png")
    overlay_paths = []
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
        chosen = _pick_overlay_cases(masks[names[0]], overlays)
        for ep in chosen:
            case = {n: masks[n][ep] for n in names if ep in masks[n]}
            overlay_paths.append(plot_overlay(case, ep, out / "overlays" / f"episode_{ep:03d}.png"))
    meta = {"env_kwargs": {k: str(v) if not isinstance(v, (int, float, str, bool, type(None), list, tuple)) else v
                           for k, v in env_kwargs.items()},
            "episodes": episodes, "seed": seed, "train_seed": seed + TRAIN_SEED_OFFSET, "policies": names,
            "training": training, "eval_seconds": round(eval_seconds, 1),
            "total_seconds": round(time.perf_counter() - t_start, 1), "host": platform.node(),
            "python": platform.python_version()}
    E.write_json(meta, out / "benchmark.json")
    return {"leaderboard": rows, "per_case_csv": per_case, "curves_csv": curves_csv, "leaderboard_csv": lb_csv,
            "leaderboard_md": lb_md, "metrics_png": metrics_png, "dice_steps_png": steps_png,
            "overlays": overlay_paths, "out": out}


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
            and _dice(sink[e]["annotation"], sink[e]["truth"]) < 0.98]
    rest = [e for e in eps if e not in good]
    return (good + rest)[:n]


def _notes(env_kwargs, episodes, seed, training) -> list[str]:
    env = ", ".join(f"{k}={v}" for k, v in env_kwargs.items() if v is not None and k != "device")
    env = (env or "defaults") + ("" if env_kwargs.get("noise") else " (default noise of the data)")
    notes = [f"Environment: {env}. Episodes: seeds {seed}..{seed + episodes - 1}."]
    for name, t in training.items():
        if "checkpoint" in t:
            notes.append(f"{name}: loaded from {t['checkpoint']}.")
        else:
            unit = "CPU-min" if t.get("clock") == "cpu" else "min"
            alongside = f", in parallel with {t['trained_alongside']} other(s)" if t.get("trained_alongside") else ""
            notes.append(f"{name}: trained {t['minutes_used']} min wall (budget {t['minutes_budget']:g} {unit}"
                         f"{alongside}), run {t['run']}.")
    return notes
