"""The benchmark's warm-start track (agents.eval.warm_start): the supervised checkpoint is the
control row, every other learned agent fine-tunes from it (supervised, when benchmarked, trains
on from it: the same-compute control); benchmark.json records both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.cli import main
from agents.common.checkpoint import load_checkpoint
from agents.eval import benchmark as B

ENV = dict(patch_size=10, max_steps=2)
TINY = {a: {"num_envs": 2} for a in ("va3c", "supervised", "voxel-ppo")}


def test_warm_start_track_scores_the_checkpoint_and_the_fine_tuned_agents(tmp_path):
    res = B.run(agents="identity,va3c,voxel-ppo", env_kwargs=ENV, episodes=3, seed=0, out=tmp_path,
                train_minutes=0.01, overlays=0, progress=False, track="warm-start", train_config=TINY,
                precision="fp32")
    rows = {r["policy"] for r in res["leaderboard"]}
    assert rows == {"identity", "supervised (checkpoint)", "vA3C (warm start)", "voxel-PPO (warm start)"}
    meta = json.loads((tmp_path / "benchmark.json").read_text())
    ck = tmp_path / "runs" / "supervised" / "checkpoint.pt"
    assert meta["track"] == "warm-start" and meta["warm_start"]["checkpoint"] == str(ck)
    assert meta["warm_start"]["control"] == "supervised (checkpoint)"
    assert load_checkpoint(ck)["kind"] == "supervised"
    for agent in ("va3c", "voxel-ppo"):  # fine-tuned from that checkpoint, each in its own run folder
        cfg = json.loads((tmp_path / "warm-start" / "runs" / agent / "config.json").read_text())
        assert Path(cfg["init_from"]["path"]) == ck.resolve()
    assert not (tmp_path / "runs" / "va3c").exists()  # nothing trained from scratch
    assert "fine-tuned from" in res["leaderboard_md"].read_text()
    # P(improvement) of a fine-tuned row is over the checkpoint it started from
    import csv

    controls = {r["policy"]: r["control"] for r in csv.DictReader(open(tmp_path / "stats.csv"))}
    assert controls["vA3C (warm start)"] == controls["voxel-PPO (warm start)"] == "supervised (checkpoint)"
    assert controls["supervised (checkpoint)"] == "identity"


def test_both_tracks_share_the_given_checkpoint(tmp_path):
    from agents.supervised import train_supervised

    ck = tmp_path / "sup"
    train_supervised(ENV, updates=1, out=ck, progress=False, num_envs=2, precision="fp32")
    res = B.run(agents="identity,supervised,voxel-ppo", env_kwargs=ENV, episodes=2, seed=0, out=tmp_path / "b",
                train_minutes=0.01, overlays=0, progress=False, track="both", train_config=TINY, precision="fp32",
                checkpoints={"supervised": str(ck)})
    rows = [r["policy"] for r in res["leaderboard"]]
    # the scratch supervised row is the checkpoint itself: the control, not a second identical row;
    # supervised also trains on from it (its warm row: the same compute as the RL rows' fine-tuning)
    sup = "supervised (vA3C net, Warmup loss only)"
    assert sorted(rows) == sorted(["identity", sup, f"{sup} (warm start)", "voxel-PPO", "voxel-PPO (warm start)"])
    meta = json.loads((tmp_path / "b" / "benchmark.json").read_text())["warm_start"]
    assert meta["control"] == sup and meta["checkpoint_source"] == "given"
    assert meta["controls"] == {f"{sup} (warm start)": sup, "voxel-PPO (warm start)": f"{sup} (warm start)"}
    cfg = json.loads((tmp_path / "b" / "warm-start" / "runs" / "supervised" / "config.json").read_text())
    assert Path(cfg["init_from"]["path"]) == (ck / "checkpoint.pt").resolve() and cfg["stages"] == {"warmup": [0, 1]}


def test_tracks_that_cannot_run_are_refused_before_training(tmp_path, capsys):
    with pytest.raises(ValueError, match="track must be one of"):
        B.run(agents="identity", env_kwargs=ENV, out=tmp_path, track="warm")
    with pytest.raises(ValueError, match="rllib-ppo cannot start from a checkpoint"):
        B.run(agents="identity,rllib-ppo", env_kwargs=ENV, out=tmp_path, train_minutes=1, track="warm-start")
    (tmp_path / "va3c.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="--checkpoint applies to supervised only"):
        B.run(agents="identity,va3c", env_kwargs=ENV, out=tmp_path, train_minutes=1, track="warm-start",
              checkpoints={"va3c": str(tmp_path / "va3c.pt")})
    from agents.va3c import VA3CPolicy

    VA3CPolicy.untrained(ENV).save(tmp_path / "v" / "checkpoint.pt")
    with pytest.raises(ValueError, match="kind 'va3c', expected supervised"):
        B.run(agents="identity,va3c", env_kwargs=ENV, out=tmp_path, train_minutes=1, track="both",
              checkpoints={"supervised": str(tmp_path / "v")})
    assert not (tmp_path / "runs").exists()  # refused before anything trained
    assert main(["benchmark", "--agents", "identity,va3c", "--track", "warm-start", "--train-minutes", "va3c=1",
                 "--out", str(tmp_path / "cli")]) == 2
    assert "no training budget for ['supervised']" in capsys.readouterr().err


def _stats_controls(out: Path) -> dict:
    import csv

    return {r["policy"]: (r["control"], int(r["runs"])) for r in csv.DictReader(open(out / "stats.csv"))}


def _runs(out: Path) -> dict:
    import csv

    runs: dict = {}
    for r in csv.DictReader(open(out / "per_case.csv")):
        runs.setdefault(r["policy"], set()).add(int(r["run"]))
    return runs


def test_both_tracks_over_seeds_fine_tune_run_k_from_supervised_run_k(tmp_path):
    res = B.run(agents="identity,supervised,voxel-ppo", env_kwargs=ENV, episodes=2, seed=0, out=tmp_path,
                train_minutes=0.01, overlays=0, progress=False, track="both", train_config=TINY, precision="fp32",
                seeds=2, stats_reps=20)
    sup, warm = "supervised (vA3C net, Warmup loss only)", "voxel-PPO (warm start)"
    assert _runs(tmp_path) == {"identity": {0}, sup: {0, 1}, "voxel-PPO": {0, 1}, warm: {0, 1},
                               f"{sup} (warm start)": {0, 1}}
    cks = [tmp_path / "runs" / "supervised" / f"seed{k}" / "checkpoint.pt" for k in range(2)]
    for k, ck in enumerate(cks):  # warm run k: from supervised run k, on its training seed
        cfg = json.loads((tmp_path / "warm-start" / "runs" / "voxel-ppo" / f"seed{k}" / "config.json").read_text())
        assert Path(cfg["init_from"]["path"]) == ck.resolve()
        assert cfg["seed"] == B.TRAIN_SEED_OFFSET + k
    assert not (tmp_path / "runs" / "supervised" / "seed2").exists()  # the scratch runs are the checkpoints
    meta = json.loads((tmp_path / "benchmark.json").read_text())
    assert meta["warm_start"]["checkpoint"] == [str(c) for c in cks] and meta["warm_start"]["control"] == sup
    t = meta["training"][warm]
    assert t["seeds"] == [B.TRAIN_SEED_OFFSET, B.TRAIN_SEED_OFFSET + 1] and len(t["minutes_used"]) == 2
    assert t["runs"] == [str(tmp_path / "warm-start" / "runs" / "voxel-ppo" / f"seed{k}") for k in range(2)]
    assert t["init_from"] == [str(c) for c in cks]
    assert "run k fine-tuned from" in res["leaderboard_md"].read_text()
    # the RL row against supervised trained on for the same budget; that one against the checkpoints
    stats = _stats_controls(tmp_path)
    assert stats[warm] == (f"{sup} (warm start)", 2) and stats[f"{sup} (warm start)"] == (sup, 2)


def test_warm_start_track_over_seeds_trains_one_checkpoint_per_seed(tmp_path):
    B.run(agents="identity,voxel-ppo", env_kwargs=ENV, episodes=2, seed=0, out=tmp_path, train_minutes=0.01,
          overlays=0, progress=False, track="warm-start", train_config=TINY, precision="fp32", seeds=2, stats_reps=20)
    control, warm = "supervised (checkpoint)", "voxel-PPO (warm start)"
    assert _runs(tmp_path) == {"identity": {0}, control: {0, 1}, warm: {0, 1}}
    stats = _stats_controls(tmp_path)
    assert stats[control] == ("identity", 2) and stats[warm] == (control, 2)
    meta = json.loads((tmp_path / "benchmark.json").read_text())
    assert meta["training"][control]["runs"] == [str(tmp_path / "runs" / "supervised" / f"seed{k}") for k in range(2)]
    for k in range(2):
        ck = tmp_path / "runs" / "supervised" / f"seed{k}" / "checkpoint.pt"
        assert load_checkpoint(ck)["kind"] == "supervised"
        cfg = json.loads((tmp_path / "warm-start" / "runs" / "voxel-ppo" / f"seed{k}" / "config.json").read_text())
        assert Path(cfg["init_from"]["path"]) == ck.resolve()


def test_a_run_gets_its_own_trainer_options_from_a_function():
    from agents.eval.seeds import plan_runs

    runs = plan_runs(["va3c"], 7, 2, "out")
    args = B._job_args({}, {"va3c": 1.0}, 0, lambda r: {"init_from": f"ck{r.index}"}, "cpu")
    assert [args(r)[6] for r in runs] == [{"init_from": "ck0"}, {"init_from": "ck1"}]
    assert B._job_args({}, {"va3c": 1.0}, 0, {"va3c": {"x": 1}}, "cpu")(runs[0])[6] == {"x": 1}
