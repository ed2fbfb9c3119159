"""``svl-drl benchmark --seeds N``: every trained learned agent N times on seeds SEED+100000+k,
each run scored on the same episodes, a ``run`` column in per_case.csv, rliable outputs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from agents import registry
from agents.cli import main
from agents.common.checkpoint import load_checkpoint, save_checkpoint
from agents.common.policy import Policy
from agents.eval import benchmark as B
from agents.eval import seeds as S

KEEP, MAJORITY = 0, 3


class SeedPolicy(Policy):
    """Its 'training' picks an action from the seed: keep on even seeds, majority on odd ones,
    so that two training runs differ visibly and each run's rows can be checked."""

    def __init__(self, seed: int):
        self.seed, self.action, self.name = int(seed), KEEP if seed % 2 == 0 else MAJORITY, "seeded toy"

    def act(self, obs, info=None, deterministic=True):
        return np.full((obs.shape[0], *obs.shape[2:]), self.action, dtype=np.int64)


def seed_train(*, env_kwargs, seed, out, progress, updates=None, minutes=None, cpu_minutes=None, **options):
    Path(out).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(out) / "checkpoint.pt", "seed-toy", {"seed": int(seed)}, {})
    return SeedPolicy(seed)


def seed_load(path, device="cpu"):
    return SeedPolicy(load_checkpoint(path, "seed-toy")["config"]["seed"])


@pytest.fixture
def seed_agent():
    spec = registry.register_agent(registry.AgentSpec(
        name="seed-toy", label="seeded toy", kind="seed-toy", train=seed_train, load=seed_load,
        train_cli=lambda args: None, control="va3c"))  # its control is not benchmarked: identity instead
    yield spec
    registry.unregister_agent("seed-toy")


def _per_case(out):
    with open(out / "per_case.csv") as fh:
        return list(csv.DictReader(fh))


def test_benchmark_seeds_2_writes_rliable_outputs(seed_agent, tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["benchmark", "--agents", "identity,majority,seed-toy", "--seeds", "2", "--train-minutes", "0.1",
            "--episodes", "3", "--patch-size", "10", "--max-steps", "2", "--overlays", "1", "--bootstrap-reps", "50",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "### Statistics over training runs" in printed and "### Leaderboard" in printed
    for f in ("stats.md", "stats.csv", "performance_profile.png", "leaderboard.md", "curves.csv"):
        assert (out / f).stat().st_size > 0, f
    # run k trained on seed 0 + TRAIN_SEED_OFFSET + k, in runs/<agent>/seed<k>
    for k in (0, 1):
        ck = load_checkpoint(out / "runs" / "seed-toy" / f"seed{k}" / "checkpoint.pt", "seed-toy")
        assert ck["config"]["seed"] == B.TRAIN_SEED_OFFSET + k
    rows = _per_case(out)
    runs = {p: sorted({r["run"] for r in rows if r["policy"] == p}) for p in {r["policy"] for r in rows}}
    assert runs == {"identity": ["0"], "majority 3x3x3": ["0"], "seeded toy": ["0", "1"]}
    dice = {(r["policy"], r["run"], r["episode"]): float(r["dice"]) for r in rows}
    # the same episodes: run 0 (keep everywhere) scores exactly as identity, run 1 (majority votes) does not
    assert all(dice[("seeded toy", "0", e)] == dice[("identity", "0", e)] for e in ("0", "1", "2"))
    assert any(dice[("seeded toy", "1", e)] != dice[("identity", "0", e)] for e in ("0", "1", "2"))
    with open(out / "stats.csv") as fh:
        st = {r["policy"]: r for r in csv.DictReader(fh)}
    assert (st["seeded toy"]["runs"], st["seeded toy"]["episodes"]) == ("2", "3")
    assert st["identity"]["runs"] == st["majority 3x3x3"]["runs"] == "1"
    assert st["seeded toy"]["control"] == "identity" and "vA3C not in this run" in st["seeded toy"]["control_note"]
    lb = {r["policy"]: r for r in B.leaderboard_from_per_case(out / "per_case.csv")}
    assert lb["seeded toy"]["n"] == 6 and lb["identity"]["n"] == 3  # runs x episodes
    assert lb["seeded toy"]["dice_mean"] == pytest.approx(np.mean([v for (p, _, _), v in dice.items()
                                                                    if p == "seeded toy"]))
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["seeds"] == 2 and meta["training"]["seeded toy"]["seeds"] == [100000, 100001]
    assert meta["policies"] == ["identity", "majority 3x3x3", "seeded toy"]
    assert "2 training runs, seeds 100000..100001" in (out / "leaderboard.md").read_text()


def test_one_seed_is_the_single_seed_benchmark(seed_agent, tmp_path):
    out = tmp_path / "one"
    B.run(agents="identity,seed-toy", env_kwargs=dict(patch_size=10, max_steps=2), episodes=2, out=out,
          train_minutes=0.1, overlays=0, progress=False, stats_reps=20)
    ck = load_checkpoint(out / "runs" / "seed-toy" / "checkpoint.pt", "seed-toy")  # the folder it always had
    assert ck["config"]["seed"] == B.TRAIN_SEED_OFFSET
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["seeds"] == 1 and set(meta["training"]["seeded toy"]) == {"minutes_budget", "clock", "minutes_used",
                                                                          "run"}
    assert {r["run"] for r in _per_case(out)} == {"0"}
    with pytest.raises(ValueError, match="seeds must be a positive int"):
        B.run(agents="identity", env_kwargs=dict(patch_size=10), episodes=2, out=tmp_path / "x", seeds=0)
    for flag in ("--seeds", "--bootstrap-reps"):
        assert main(["benchmark", "--agents", "identity", flag, "0", "--out", str(tmp_path / "y")]) == 2


def test_all_agent_seed_runs_go_to_the_pool(tmp_path):
    runs = S.plan_runs(["a", "b"], 500, 2, tmp_path)
    assert [(r.agent, r.index, r.seed, r.folder.relative_to(tmp_path).as_posix()) for r in runs] == [
        ("a", 0, 500, "runs/a/seed0"), ("a", 1, 501, "runs/a/seed1"),
        ("b", 0, 500, "runs/b/seed0"), ("b", 1, 501, "runs/b/seed1")]
    # the worker's job is called as job(*job_args(run), threads) -> (file, minutes); divmod stands in for
    # benchmark._train_job: a builtin, so the spawned workers need not import torch (seconds per worker)
    threads = max(1, (os.cpu_count() or 2) // 2)
    done = S.train_runs(runs, train=None, job=divmod, job_args=lambda r: (r.seed * threads,),
                        load=lambda r, quotient: (r.agent, quotient), jobs=2, progress=False)
    assert done == {r: ((r.agent, r.seed), 0) for r in runs}
