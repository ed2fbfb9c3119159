"""The benchmark: leaderboard built from the per-case file, outputs, CLI errors, custom agents."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from agents.eval import benchmark as B
from agents.common.policy import Policy
from agents.cli import main
from agents.eval.episodes import PER_CASE_FIELDS, write_per_case_csv

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(patch_size=10, max_steps=2)


def _record(policy, ep, dice, hd95=1.0):
    r = {k: 0.0 for k in PER_CASE_FIELDS}
    r.update(policy=policy, episode=ep, case=f"c{ep}", corrupted=True, n_components=1, dice=dice, iou=dice / 2,
             hd95=hd95, dice_annotation=0.5, dice_gain=dice - 0.5, seconds=0.1)
    return r


def test_leaderboard_from_per_case(tmp_path):
    a = [0.9, 0.8, 0.7, 0.95]
    b = [0.5, 0.6, 0.55, 0.4]
    recs = [_record("B", i, d, hd95=float("nan") if i == 0 else 2.0) for i, d in enumerate(b)]
    recs += [_record("A", i, d) for i, d in enumerate(a)]
    path = write_per_case_csv(recs, tmp_path / "per_case.csv")
    rows = B.leaderboard_from_per_case(path)
    assert [r["policy"] for r in rows] == ["A", "B"] and [r["rank"] for r in rows] == [1, 2]  # best Dice first
    half = stats.t.ppf(0.975, 3) * np.std(a, ddof=1) / 2
    assert rows[0]["dice_mean"] == pytest.approx(np.mean(a)) and rows[0]["dice_ci95"] == pytest.approx(half)
    assert rows[0]["dice_gain_mean"] == pytest.approx(np.mean(a) - 0.5)
    assert rows[1]["hd95_n"] == 3 and rows[1]["hd95_mean"] == pytest.approx(2.0)  # NaN (empty mask) dropped, counted
    csv_path, md_path = B.write_leaderboard(rows, tmp_path)
    md = md_path.read_text()
    assert f"{np.mean(a):.3f} ± {half:.3f}" in md and "(3/4)" in md
    with open(csv_path) as fh:
        back = list(csv.DictReader(fh))
    assert float(back[0]["dice_mean"]) == pytest.approx(np.mean(a))
    bad = tmp_path / "bad.csv"
    bad.write_text("policy,dice\nA,1\n")
    with pytest.raises(ValueError, match="not a per-case file"):
        B.leaderboard_from_per_case(bad)


class HalfOracle(Policy):
    """A custom policy object for the Python API test: keeps everything (identity under another name)."""

    name = "my keep"

    def act(self, obs, info=None, deterministic=True):
        return np.zeros((obs.shape[0], *obs.shape[2:]), np.int64)


def test_run_writes_everything_from_per_case(tmp_path):
    res = B.run([HalfOracle()], agents="identity,majority,intensity,oracle", env_kwargs=ENV, episodes=5, seed=3,
                out=tmp_path, batch_size=3, overlays=2, progress=False)
    out = Path(res["out"])
    for f in ("per_case.csv", "curves.csv", "leaderboard.csv", "leaderboard.md", "metrics.png", "dice_steps.png",
              "benchmark.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert len(res["overlays"]) == 2 and all(p.stat().st_size > 1000 for p in res["overlays"])
    # every number of the leaderboard is recomputed from per_case.csv
    rows = B.leaderboard_from_per_case(out / "per_case.csv")
    with open(out / "leaderboard.csv") as fh:
        written = list(csv.DictReader(fh))
    assert [w["policy"] for w in written] == [r["policy"] for r in rows]
    for w, r in zip(written, rows):
        for k, v in r.items():
            if isinstance(v, float) and not math.isnan(v):
                assert float(w[k]) == pytest.approx(v), k
    by = {r["policy"]: r for r in rows}
    assert rows[0]["policy"] == "oracle (upper bound)" and by["oracle (upper bound)"]["dice_mean"] == 1.0
    assert by["identity"]["dice_gain_mean"] == 0.0 and by["my keep"]["dice_mean"] == by["identity"]["dice_mean"]
    assert all(r["n"] == 5 for r in rows)
    with open(out / "per_case.csv") as fh:
        cases = {(r["policy"], r["episode"]): r["case"] for r in csv.DictReader(fh)}
    # identical seeded episodes for every policy
    assert cases[("identity", "4")] == cases[("my keep", "4")] == cases[("oracle (upper bound)", "4")]
    assert "oracle (upper bound)" in res["leaderboard_md"].read_text()


def test_run_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown agent"):
        B.run(agents="identity,nope", env_kwargs=ENV, episodes=2, out=tmp_path)
    with pytest.raises(ValueError, match="--train-minutes"):
        B.run(agents="ppo", env_kwargs=ENV, episodes=2, out=tmp_path)
    with pytest.raises(ValueError, match="share the name"):
        B.run([HalfOracle(), HalfOracle()], agents="", env_kwargs=ENV, episodes=2, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="not a policy"):
        B.run([object()], agents="identity", env_kwargs=ENV, episodes=2, out=tmp_path)


def test_cli_errors_exit_2(tmp_path, capsys):
    out = str(tmp_path / "b")
    assert main(["benchmark", "--agents", "identity,bogus", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svl-drl benchmark: error:") and "bogus" in err[0]
    assert main(["benchmark", "--agents", "ppo", "--checkpoint", f"ppo={tmp_path}/missing.zip", "--out", out]) == 2
    assert main(["benchmark", "--agents", "identity", "--custom", "no_such_module_xyz:Cls", "--out", out]) == 2
    assert main(["benchmark", "--agents", "identity", "--episodes", "0", "--out", out]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_learned_agents_checkpoint_and_budget(tmp_path):
    """ppo from a checkpoint and a2c trained for a few seconds appear in the table whatever their rank."""
    from agents.sb3.train import train_sb3

    ckpt = tmp_path / "ppo_run"
    train_sb3("ppo", ENV, timesteps=4, num_envs=2, out=ckpt, progress=False, width=4, depth=1, n_steps=2,
              batch_size=4, n_epochs=1)
    out = tmp_path / "bench"
    rc = main(["benchmark", "--agents", "identity,ppo,a2c", "--checkpoint", f"ppo={ckpt / 'model.zip'}",
               "--train-minutes", "a2c=0.05", "--episodes", "3", "--patch-size", "10", "--max-steps", "2",
               "--overlays", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    names = [r["policy"] for r in B.leaderboard_from_per_case(out / "per_case.csv")]
    assert set(names) == {"identity", "PPO (SB3)", "A2C (SB3)"}
    assert (out / "runs" / "a2c" / "model.zip").is_file()


def test_learned_agents_trained_in_parallel(tmp_path):
    """--train-jobs 2: vA3C and A2C train at once in two processes on CPU budgets; both are
    loaded back from their run folders and scored; wall budgets are refused for parallel jobs."""
    out = tmp_path / "par"
    argv = ["benchmark", "--agents", "identity,va3c,a2c", "--train-minutes", "0.03", "--clock", "cpu",
            "--train-jobs", "2", "--episodes", "2", "--patch-size", "10", "--max-steps", "2", "--overlays", "0",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    names = [r["policy"] for r in B.leaderboard_from_per_case(out / "per_case.csv")]
    assert set(names) == {"identity", "vA3C", "A2C (SB3)"}
    assert (out / "runs" / "va3c" / "checkpoint.pt").is_file() and (out / "runs" / "a2c" / "model.zip").is_file()
    assert "in parallel with 1 other" in (out / "leaderboard.md").read_text()
    with pytest.raises(ValueError, match="CPU-time budgets"):
        B.run(agents="va3c,a2c", env_kwargs=ENV, episodes=2, out=tmp_path / "w", train_minutes=0.03, train_jobs=2)


def test_custom_agent_example_runs(tmp_path):
    """examples/custom_agent.py end to end (small settings) and the same class through --custom."""
    out = tmp_path / "custom"
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_agent.py"), "--episodes", "3",
                          "--patch-size", "10", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "contrast snap (custom)" in res.stdout and "oracle (upper bound)" in res.stdout
    out2 = tmp_path / "cli"
    rc = main(["benchmark", "--agents", "identity", "--custom",
               f"{ROOT / 'examples' / 'custom_agent.py'}:ContrastSnapPolicy", "--episodes", "2", "--patch-size", "10",
               "--max-steps", "2", "--overlays", "0", "--out", str(out2), "--no-progress"])
    assert rc == 0
    assert "contrast snap (custom)" in (out2 / "leaderboard.md").read_text()
