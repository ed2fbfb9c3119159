"""Can the RL stages of vA3C add something over its supervised control? (issue 15, item 6)

``--preset full`` of ``svl-drl benchmark`` found vA3C (Warmup, then value and policy stages) no
better than ``supervised`` (the same network with the Warmup loss for the whole budget). This
script trains variants of vA3C that change what its RL stages do, each over the same training
seeds, budget, environment and evaluation episodes as that preset, and scores them with the
same rliable statistics against the supervised control:

- ``rl-70``: the value and policy stages get 70 % of the budget instead of 40 % (Warmup 30 %);
- ``no-counterfactual``: the policy stage without the counterfactual action-reward term
  (``mac_coef=0``: the n-step policy gradient alone);
- ``counterfactual-x10``: that term ten times stronger (``mac_coef=1.0``);
- ``dice-reward``: the training env's reward is the Dice gain alone (``reward_weights=
  {"w_cont": 0}``), i.e. exactly the evaluation metric, with no continuity penalty;
- ``pure-rl``: the value and policy stages without the supervised term (``sup_coef=0``).
- ``horizon-10``: training episodes of 10 steps instead of 5 (evaluation keeps 5; the
  time channel then reads "half way" at the evaluation's last step).

The controls (vA3C with its defaults, ``supervised``, identity) are trained and scored here by
default (``--controls``); ``--reference DIR`` takes them instead from a ``svl-drl benchmark``
folder of the same setting (its ``per_case.csv``, checked against its ``benchmark.json``), so a
``--preset full`` run on the same machine is not repeated. Budgets are CPU-minutes, runs train
``--train-jobs`` at a time; a run whose checkpoint exists is reused (``--reuse``), so
``--train-only`` now and ``--reuse --reference DIR`` later split the work.

    python benchmarks/va3c_ablations.py --out /tmp/ablations [--reference /tmp/full] \
        [--variants rl-70,dice-reward] [--seeds 5] [--cpu-minutes 3]

Writes ``OUT/per_case.csv`` (every run of every arm on the same episodes), ``OUT/stats.md|csv``
and ``OUT/performance_profile.png`` (``agents.eval.stats``), ``OUT/ablations.md`` (the table,
with each arm's IQM difference to vA3C and to supervised) and ``OUT/ablations.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: idle OpenMP threads sleep

from agents import registry  # noqa: E402
from agents.eval import benchmark as B  # noqa: E402
from agents.eval import episodes as E  # noqa: E402
from agents.eval import seeds as S  # noqa: E402
from agents.eval import stats as ST  # noqa: E402
from agents.heuristics import make_heuristic  # noqa: E402
from agents.va3c.config import make_config  # noqa: E402

#: the setting of ``svl-drl benchmark --preset full``: quick env (phantoms, 32^3), 32 episodes
#: from seed 0, training seeds 100000 + k, 3 CPU-min, vA3C and supervised on 4 envs per update
ENV = {"data": "phantom", "patch_size": 32, "max_steps": 5}  # as `svl-drl benchmark` records it
BASE_CONFIG = dict(B.FULL["train_config"]["va3c"])
SUPERVISED = registry.get_agent("supervised").label
VA3C = registry.get_agent("va3c").label

#: name -> (what it changes, vA3C options, training-env options)
VARIANTS = {
    "rl-70": ("value + policy stages 70 % of the budget (warmup_frac 0.3)", {"warmup_frac": 0.3}, {}),
    "no-counterfactual": ("policy stage without the counterfactual action rewards (mac_coef 0)",
                          {"mac_coef": 0.0}, {}),
    "counterfactual-x10": ("counterfactual action-reward term x10 (mac_coef 1.0)", {"mac_coef": 1.0}, {}),
    "dice-reward": ("reward = Dice gain only (training env w_cont 0)", {}, {"reward_weights": {"w_cont": 0.0}}),
    "pure-rl": ("value + policy stages without the supervised term (sup_coef 0)", {"sup_coef": 0.0}, {}),
    "horizon-10": ("training episodes of 10 steps (evaluation: 5)", {}, {"max_steps": 10}),
}
DEFAULT_VARIANTS = ("rl-70", "no-counterfactual", "counterfactual-x10", "dice-reward", "horizon-10")


def arm_label(name: str) -> str:
    return f"vA3C [{name}]"


def _check_reference(ref: Path, episodes: int, seed: int, minutes: float) -> tuple[list[dict], dict]:
    """The controls' per-case rows from a benchmark folder of the same setting, and their run
    folders {label: [folders]} (ValueError: one line)."""
    meta = json.loads((ref / "benchmark.json").read_text())
    from svl_env import EnvConfig

    problems = []
    if meta.get("episodes") != episodes or meta.get("seed") != seed:
        problems.append(f"episodes/seed {meta.get('episodes')}/{meta.get('seed')} (here {episodes}/{seed})")
    if meta.get("train_seed") != seed + B.TRAIN_SEED_OFFSET:
        problems.append(f"train_seed {meta.get('train_seed')}")
    if meta.get("env_kwargs") != EnvConfig.from_any(ENV).to_json(strict=False):
        problems.append("another environment")
    for label in (VA3C, SUPERVISED):
        t = meta.get("training", {}).get(label, {})
        if t.get("minutes_budget") != minutes or t.get("clock") != "cpu":
            problems.append(f"{label} budget {t.get('minutes_budget')} {t.get('clock')}")
    if problems:
        raise ValueError(f"--reference {ref} is not the same setting: {'; '.join(problems)}")
    keep = {"identity", VA3C, SUPERVISED}
    rows = [r for r in E.read_per_case_csv(ref / "per_case.csv") if r["policy"] in keep]
    return rows, {label: meta["training"][label].get("runs", [meta["training"][label].get("run")])
                  for label in (VA3C, SUPERVISED)}


def _updates(folders) -> str:
    """Mean updates per run in each stage, "warmup/value/policy", from the runs' metrics.csv
    (what the CPU budget bought: a Warmup update is ``warmup_reuse`` optimiser steps on replayed
    states, an RL update one step on a fresh on-policy episode)."""
    import csv

    counts = []
    for f in folders:
        path = Path(f) / "metrics.csv"
        if not path.exists():
            return "?"
        with open(path, newline="") as fh:
            stages = [row["stage"] for row in csv.DictReader(fh)]
        counts.append([stages.count(s) for s in ("warmup", "value", "policy")])
    if not counts:
        return "?"
    return "/".join(f"{sum(c[i] for c in counts) / len(counts):.0f}" for i in range(3))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/va3c_ablations", help="output folder (default: %(default)s)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated, among {', '.join(VARIANTS)} (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=B.FULL["seeds"], help="training runs per arm (default: %(default)s)")
    ap.add_argument("--cpu-minutes", type=float, default=B.FULL["train_minutes"]["va3c"],
                    help="training budget per run in CPU-minutes (default: %(default)s, the full preset's)")
    ap.add_argument("--episodes", type=int, default=B.FULL["episodes"],
                    help="evaluation episodes (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="episode i is reset with seed SEED + i (default: 0)")
    ap.add_argument("--reference", type=Path, default=None,
                    help="a `svl-drl benchmark` folder of the same setting (e.g. --preset full) whose identity, vA3C "
                         "and supervised rows are the controls; default: train and score them here")
    ap.add_argument("--train-jobs", type=int, default=2, help="runs trained at once (default: %(default)s)")
    ap.add_argument("--reuse", action="store_true", help="reuse runs whose checkpoint exists in OUT/runs")
    ap.add_argument("--train-only", action="store_true",
                    help="train the variants' runs and stop (no controls, no scoring); a later call with --reuse "
                         "(and --reference) scores them")
    ap.add_argument("--bootstrap-reps", type=int, default=B.FULL["bootstrap_reps"], help="(default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose among {', '.join(VARIANTS)}")
    out = args.out = Path(args.out)
    progress = not args.no_progress
    reference, folders = [], {}
    if args.reference is not None:
        try:
            reference, folders = _check_reference(args.reference, args.episodes, args.seed, args.cpu_minutes)
        except (OSError, ValueError) as e:
            ap.error(str(e))

    # every (arm, seed) run: {label: (folder in OUT/runs, agent, trainer options, training env)}
    arms = {arm_label(v): (v, "va3c", {**BASE_CONFIG, **VARIANTS[v][1]}, {**ENV, **VARIANTS[v][2]}) for v in names}
    if not reference and not args.train_only:
        arms[VA3C] = ("va3c", "va3c", dict(BASE_CONFIG), dict(ENV))
        arms[SUPERVISED] = ("supervised", "supervised", dict(B.FULL["train_config"]["supervised"]), dict(ENV))
    runs, spec = [], {}
    for label, (folder, agent, cfg, env) in arms.items():
        for r in S.plan_runs([folder], args.seed + B.TRAIN_SEED_OFFSET, args.seeds, out):
            runs.append(r)
            spec[r] = (label, agent, cfg, env)
            folders.setdefault(label, []).append(r.folder)
    ckpt = {r: r.folder / registry.get_agent(spec[r][1]).checkpoint for r in runs}
    todo = [r for r in runs if not (args.reuse and ckpt[r].exists())]
    print(f"{len(runs)} runs ({len(todo)} to train) x {args.cpu_minutes:g} CPU-min, {args.train_jobs} at once")
    S.train_runs(todo, jobs=args.train_jobs, progress=progress,
                 train=lambda r: B.train_learned(spec[r][1], spec[r][3], args.cpu_minutes, r.seed, r.folder,
                                                 progress, config=spec[r][2], clock="cpu"),
                 # the benchmark's own pool job; each run its own agent, options and env
                 job=B._train_job, job_args=lambda r: (spec[r][1], spec[r][3], args.cpu_minutes, r.seed,
                                                       str(r.folder), 0, spec[r][2], "cpu"),
                 load=lambda r, path: path)
    if args.train_only:
        return 0

    # ---- score every run on the same episodes
    eval_env = E.memo_env_config(ENV)
    records = list(reference)
    if not reference:
        recs, _ = E.run_episodes(make_heuristic("identity"), eval_env, args.episodes, args.seed, progress=progress)
        records += [{**x, E.RUN_FIELD: 0} for x in recs]
    for r in runs:
        label, agent = spec[r][:2]
        pol = B.load_learned(agent, ckpt[r])
        pol.name = label
        recs, _ = E.run_episodes(pol, eval_env, args.episodes, args.seed, progress=progress,
                                 desc=f"eval {label} run {r.index}")
        records += [{**x, E.RUN_FIELD: r.index} for x in recs]
    per_case = E.write_per_case_csv(records, out / "per_case.csv")
    controls = {**{label: SUPERVISED for label in arms}, VA3C: SUPERVISED, SUPERVISED: "identity"}
    notes = [f"Training: {args.seeds} runs per arm (seeds {args.seed + B.TRAIN_SEED_OFFSET}+k), "
             f"{args.cpu_minutes:g} CPU-min each, {BASE_CONFIG}; controls "
             + (f"from {args.reference}" if reference else "trained here") + "."]
    stats = ST.write_stats(per_case, out, controls, reps=args.bootstrap_reps, notes=notes,
                           title=f"vA3C ablations vs supervised ({args.episodes} episodes, seed {args.seed})")
    by = {row["policy"]: row for row in stats["rows"]}
    lines = [f"# vA3C ablations ({args.seeds} seeds x {args.episodes} episodes, {args.cpu_minutes:g} CPU-min)", "",
             "| arm | what changes | updates W/V/P | Dice IQM [95 % CI] | Δ vs vA3C | Δ vs supervised "
             "| P(arm > supervised) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    what = {arm_label(v): VARIANTS[v][0] for v in names}
    what.update({VA3C: "defaults (Warmup 60 %, value 10 %, policy 30 %)",
                 SUPERVISED: "Warmup loss for the whole budget", "identity": "the annotation"})
    for row in stats["rows"]:
        p = row["policy"]
        d_v = row["iqm"] - by[VA3C]["iqm"] if VA3C in by else float("nan")
        d_s = row["iqm"] - by[SUPERVISED]["iqm"] if SUPERVISED in by else float("nan")
        pi = (f"{row['p_improvement']:.2f} [{row['p_ci_low']:.2f}, {row['p_ci_high']:.2f}]"
              if row["control"] == SUPERVISED else "")
        ups = _updates(folders[p]) if p in folders else "–"
        lines.append(f"| {p} | {what.get(p, '')} | {ups} | {row['iqm']:.3f} [{row['iqm_ci_low']:.3f}, "
                     f"{row['iqm_ci_high']:.3f}] | {d_v:+.3f} | {d_s:+.3f} | {pi} |")
    lines += ["", "updates W/V/P: mean updates per run in the Warmup, value and policy stages (a Warmup update is "
              f"{make_config(**BASE_CONFIG)['warmup_reuse']} optimiser steps on replayed states; an RL update one "
              "step on a fresh episode).", *notes, "", "Command: `python benchmarks/va3c_ablations.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("variants", ",".join(names)), ("seeds", args.seeds),
                                                    ("cpu_minutes", args.cpu_minutes))) +
        (f" --reference {args.reference}" if reference else "") + "`", ""]
    (out / "ablations.md").write_text("\n".join(lines))
    (out / "ablations.json").write_text(json.dumps(
        {"variants": {v: {"what": VARIANTS[v][0], "va3c": VARIANTS[v][1], "env": VARIANTS[v][2]} for v in names},
         "base_config": BASE_CONFIG, "env": ENV, "seeds": args.seeds, "cpu_minutes": args.cpu_minutes,
         "episodes": args.episodes, "reference": str(args.reference) if reference else None,
         "stats": stats["rows"]}, indent=1, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
