"""Ray RLlib PPO (``agents.rllib``): per-voxel distribution, training on 2 env runners, Policy protocol.

The tests that need Ray skip without the extra (``pip install "svl-drl[rllib]"``); the
policy/checkpoint tests and the missing-extra CLI message run everywhere.
"""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from agents.common.policy import Policy
from agents.common.checkpoint import CheckpointError, save_checkpoint
from agents.cli import main
from agents.rllib import INSTALL_HINT, RLlibPolicy, VoxelPPONet

ENV = dict(patch_size=8, max_steps=3)
TINY = dict(width=4, depth=1)
ITERS = 3
RUNNERS, ENVS_PER_RUNNER = 2, 2


def _obs(b=2, s=8, seed=0):
    return np.random.default_rng(seed).random((b, 6, s, s, s), dtype=np.float32)


# ------------------------------------------------------------ policy without Ray
def test_policy_protocol_and_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    pol = RLlibPolicy(VoxelPPONet(6, 4, keep_bias=0.0, **TINY), {"env": ENV})
    assert isinstance(pol, Policy)
    obs = _obs()
    a = pol.act(obs, None, deterministic=True)
    assert a.shape == (2, 8, 8, 8) and a.dtype == np.int64 and 0 <= a.min() and a.max() < 4
    np.testing.assert_array_equal(a, pol.act(obs, None, deterministic=True))
    s = pol.act(obs, None, deterministic=False)
    assert s.shape == a.shape and s.dtype == np.int64 and 0 <= s.min() and s.max() < 4
    assert pol.act(_obs(1, 12), None).shape == (1, 12, 12, 12)  # fully convolutional
    assert pol.value(obs).shape == (2,)
    path = pol.save(tmp_path / "checkpoint.pt", meta={"iteration": 0})
    back = RLlibPolicy.load(tmp_path)  # the run folder works too
    np.testing.assert_array_equal(back.act(obs), a)
    assert back.config["env"] == ENV
    # tensor-only format: other kinds and broken configs are refused with the file named
    other = save_checkpoint(tmp_path / "x.pt", "va3c", {}, {"model": {}})
    with pytest.raises(CheckpointError, match="kind 'va3c'"):
        RLlibPolicy.load(other)
    bad = save_checkpoint(tmp_path / "big.pt", "rllib-ppo", {"net": {**pol.net.config, "width": 10 ** 6}},
                          {"model": pol.net.state_dict()})
    with pytest.raises(CheckpointError, match="width"):
        RLlibPolicy.load(bad)
    assert path.is_file()


def test_cli_without_ray_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    # None in sys.modules makes "import ray" raise ImportError, as on a machine without the extra
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.rllib", None)
    rc = main(["train", "--agent", "rllib-ppo", "--updates", "1", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert 'pip install "svl-drl[rllib]"' in err[0] and INSTALL_HINT in err[0]
    assert not (tmp_path / "r").exists()


def test_ray_options_refused_for_other_agents(capsys, tmp_path):
    rc = main(["train", "--agent", "va3c", "--num-env-runners", "2", "--updates", "1", "--out", str(tmp_path / "r")])
    assert rc == 2 and "rllib-ppo only" in capsys.readouterr().err


def test_unreachable_address_fails_fast(capsys, tmp_path):
    pytest.importorskip("ray.rllib")
    # loopback port 1: nothing listens; refused at once instead of Ray's minutes of retries
    rc = main(["train", "--agent", "rllib-ppo", "--address", "127.0.0.1:1", "--updates", "1", "--patch-size", "8",
               "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot connect to Ray at '127.0.0.1:1'" in err[0]
    assert not (tmp_path / "r").exists()  # no partial output


# ------------------------------------------------------------ per-voxel distribution
def test_voxel_categorical_matches_per_voxel_reference():
    pytest.importorskip("ray.rllib")
    from agents.rllib.module import VoxelCategorical, VoxelCategoricalSum

    torch.manual_seed(0)
    B, K, S = 2, 3, (2, 3, 2)
    V = int(np.prod(S))
    logits = torch.randn(B, K, *S, requires_grad=True)
    other = torch.randn(B, K, *S)
    actions = torch.randint(0, K, (B, *S))
    # reference: one torch Categorical per voxel, a Python loop
    ref_lp, ref_ent, ref_kl = torch.zeros(B), torch.zeros(B), torch.zeros(B)
    for b in range(B):
        for idx in np.ndindex(*S):
            p = Categorical(logits=logits[(b, slice(None), *idx)])
            q = Categorical(logits=other[(b, slice(None), *idx)])
            ref_lp[b] = ref_lp[b] + p.log_prob(actions[(b, *idx)])
            ref_ent[b] = ref_ent[b] + p.entropy()
            ref_kl[b] = ref_kl[b] + kl_divergence(p, q)
    d_sum = VoxelCategoricalSum.from_logits(logits)
    torch.testing.assert_close(d_sum.logp(actions), ref_lp)
    torch.testing.assert_close(d_sum.entropy(), ref_ent)
    torch.testing.assert_close(d_sum.kl(VoxelCategoricalSum.from_logits(other)), ref_kl)
    d = VoxelCategorical.from_logits(logits)  # default: per-voxel mean
    torch.testing.assert_close(d.logp(actions), ref_lp / V)
    torch.testing.assert_close(d.entropy(), ref_ent / V)
    assert d.logp_map(actions).shape == (B, V) and d.entropy_map().shape == (B, V)
    # gradients reach the logits through the batched form exactly as through the loop
    g = torch.autograd.grad(d_sum.logp(actions).sum(), logits)[0]
    g_ref = torch.autograd.grad(ref_lp.sum(), logits)[0]
    torch.testing.assert_close(g, g_ref)
    # samples: the env's action shape, valid, and distributed like the probabilities
    a = d.sample()
    assert a.shape == (B, *S) and a.dtype == torch.int64 and 0 <= int(a.min()) and int(a.max()) < K
    det = d.to_deterministic()
    torch.testing.assert_close(det.sample(), logits.argmax(1))
    assert det.logp(det.sample()).shape == (B,)  # RLlib's GetActions asks the deterministic dist for logp
    many = torch.stack([VoxelCategorical.from_logits(logits.detach()).sample() for _ in range(400)])
    freq = torch.stack([(many == k).float().mean(0) for k in range(K)], 1)  # (B, K, *S)
    torch.testing.assert_close(freq, logits.detach().softmax(1), atol=0.1, rtol=0)


# ------------------------------------------------------------ training on 2 env runners
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.rllib")
    from agents.rllib.config import init_ray

    started = init_ray(None, RUNNERS)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    from agents.rllib.train import train_rllib

    out = tmp_path_factory.mktemp("rllib") / "run"
    rows = []
    pol = train_rllib(ENV, updates=ITERS, num_env_runners=RUNNERS, num_envs=ENVS_PER_RUNNER, seed=0, out=out,
                      progress=False, on_iteration=rows.append, **TINY)
    return pol, out, rows


def test_training_runs_on_two_env_runners(trained):
    pol, out, rows = trained
    assert len(rows) == ITERS
    keys = ("total_loss", "policy_loss", "vf_loss", "entropy", "episode_return_mean", "dice_clean")
    for r in rows:
        for k in keys:
            assert r[k] is not None and math.isfinite(r[k]), (k, r)
        assert 0.0 <= r["dice_clean"] <= 1.0
    # every iteration: one 3-step episode from each env of each of the 2 runners
    per_iter = RUNNERS * ENVS_PER_RUNNER * ENV["max_steps"]
    assert [r["env_steps"] for r in rows] == [per_iter * (i + 1) for i in range(ITERS)]
    # the per-voxel mean entropy of a 4-action categorical lies in (0, log 4]
    assert all(0.0 < r["entropy"] <= math.log(4) + 1e-6 for r in rows)
    # something learnable changed: the value head's last layer starts at exactly zero, the
    # policy head's "keep" bias at exactly 4.0
    fc = pol.net.value_head.fc.weight.detach()
    assert float(fc.abs().sum()) > 0.0
    assert float(pol.net.policy_head[-1].bias[0].detach()) != 4.0
    with open(out / "metrics.csv") as fh:
        assert len(list(csv.DictReader(fh))) == ITERS
    assert (out / "config.json").is_file() and any(out.glob("events.out.tfevents.*"))


def test_trained_policy_acts_under_the_protocol(trained):
    pol, out, _ = trained
    obs = _obs(3, 8, seed=1)
    a = pol.act(obs, None, deterministic=True)
    assert a.shape == (3, 8, 8, 8) and a.dtype == np.int64 and 0 <= a.min() and a.max() < 4
    np.testing.assert_array_equal(a, pol.act(obs, None, deterministic=True))
    loaded = RLlibPolicy.load(out)
    np.testing.assert_array_equal(loaded.act(obs, None, deterministic=True), a)
    # on the env itself: a full episode, actions accepted
    from agents.eval.episodes import run_episodes

    records, _ = run_episodes(loaded, dict(ENV), 2, 0, batch_size=2, progress=False)
    assert len(records) == 2 and all(0.0 <= r["dice"] <= 1.0 for r in records)


def test_resume_and_cli(trained, tmp_path, capsys):
    from agents.rllib.train import train_rllib

    _, out, _ = trained
    # resume: weights and iteration count continue (a Ray instance is up: it is reused)
    rows = []
    train_rllib(ENV, updates=1, num_env_runners=RUNNERS, num_envs=ENVS_PER_RUNNER, out=tmp_path / "resumed",
                resume=out, progress=False, on_iteration=rows.append, **TINY)
    assert rows[0]["iteration"] == ITERS + 1
    # the CLI: same options as every agent plus --num-env-runners; evaluate reads the checkpoint
    run = tmp_path / "cli"
    assert main(["train", "--agent", "rllib-ppo", "--num-env-runners", "1", "--num-envs", "2", "--updates", "1",
                 "--patch-size", "8", "--max-steps", "2", "--out", str(run), "--no-progress"]) == 0
    assert (run / "checkpoint.pt").is_file()
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "2", "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0
    assert "Dice vs truth" in capsys.readouterr().out

