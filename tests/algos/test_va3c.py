"""vA3C: networks, losses, schedule, learning, checkpoints, resume, async workers.

Small everything (16^3 patches, narrow nets, fixed seeds) so the file runs in well under a minute.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agents.eval.episodes import run_episodes
from agents.common.networks import PolicyValueNet, make_backbone
from agents.va3c import (Budget, RewardMapConv, VA3CModel, VA3CPolicy, VA3CRun, a2c_segment_loss, lr_at, make_config,
                         stage_at, supervised_loss, train_va3c)

TINY = dict(width=4, depth=1, num_envs=2)
ENV16 = dict(patch_size=16)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("kind", ["unet", "dilated"])
def test_backbone_any_size(kind):
    net = make_backbone(kind, in_channels=6, width=4, depth=2)
    x = torch.rand(2, 6, 7, 10, 13)
    y = net(x)
    assert y.shape == (2, net.out_channels, 7, 10, 13) and net.out_channels == 4


def test_policy_value_net_shapes_and_convgru():
    net = PolicyValueNet(6, 4, width=4, depth=2, convgru=True)
    x = torch.rand(3, 6, 9, 8, 12)
    logits, value, h = net(x)
    assert logits.shape == (3, 4, 9, 8, 12) and value.shape == (3, 9, 8, 12) and h.shape == (3, 4, 9, 8, 12)
    logits2, _, h2 = net(x, h)
    assert not torch.allclose(h, h2)  # the recurrent state moves
    plain = PolicyValueNet(6, 4, width=4, depth=1)
    assert plain(x)[2] is None


# ----------------------------------------------------------------------------- losses
def test_reward_conv_starts_as_identity():
    conv = RewardMapConv(3)
    r = torch.rand(2, 5, 6, 7)
    assert torch.allclose(conv(r), r)


def test_nstep_returns_match_hand_computation():
    model = VA3CModel(dict(in_channels=6, n_actions=4, width=4, depth=1), reward_conv=False)
    B, shape, gamma = 1, (2, 2, 2), 0.5
    rewards = [torch.full((B, *shape), 1.0), torch.full((B, *shape), 2.0)]
    values = [torch.zeros((B, *shape), requires_grad=True), torch.zeros((B, *shape), requires_grad=True)]
    logps = [torch.zeros((B, *shape)), torch.zeros((B, *shape))]
    boot = torch.full((B, *shape), 4.0)
    pg, vl, adv = a2c_segment_loss(model, logps, values, rewards, boot, gamma)
    # R1 = 2 + 0.5*4 = 4 ; R0 = 1 + 0.5*4 = 3 ; value loss = mean(0.5*R^2) = (0.5*16 + 0.5*9) / 2
    assert float(vl.detach()) == pytest.approx((8 + 4.5) / 2)
    assert adv == pytest.approx(3.5)


def test_supervised_loss_prefers_right_outcomes():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 4, 4, 4, generator=g) > 0.5).float()
    target = (torch.rand(2, 4, 4, 4, generator=g) > 0.5).float()
    good = torch.full((2, 4, 4, 4, 4), -5.0)
    good[:, 0][mask == target] = 5.0  # keep where right
    good[:, 1][(target == 1) & (mask == 0)] = 5.0  # set foreground where missing
    good[:, 2][(target == 0) & (mask == 1)] = 5.0  # set background where spurious
    lg, _ = supervised_loss(good, mask, target)
    lb, _ = supervised_loss(-good, mask, target)
    assert float(lg) < 0.05 and float(lb) > 1.0


def test_stage_schedule_and_lr():
    cfg = make_config(warmup_frac=0.5, value_frac=0.2)
    assert [stage_at(cfg, p) for p in (0.0, 0.49, 0.5, 0.69, 0.7, 1.0)] == \
        ["warmup", "warmup", "value", "value", "policy", "policy"]
    no_warm = make_config(warmup=False, value_frac=0.2)
    assert stage_at(no_warm, 0.0) == "value" and stage_at(no_warm, 0.3) == "policy"
    only_warm = make_config(value=False, policy=False)
    assert stage_at(only_warm, 0.99) == "warmup"
    assert lr_at(cfg, 0.0) == pytest.approx(cfg["lr"])
    assert lr_at(cfg, 1.0) == pytest.approx(cfg["lr"] * cfg["lr_min_frac"])
    with pytest.raises(ValueError):
        make_config(warmup=False, value=False, policy=False)
    with pytest.raises(ValueError):
        make_config(not_an_option=1)


# ----------------------------------------------------------------------------- learning
def _mean_dice(policy, episodes=8, seed=50_000):
    recs, _ = run_episodes(policy, ENV16, episodes, seed, batch_size=8, progress=False)
    return float(np.mean([r["dice"] for r in recs])), float(np.mean([r["dice_annotation"] for r in recs]))


def test_short_training_beats_untrained_policy():
    # keep_bias=0: the untrained policy acts (nearly) uniformly at random, as in PixelRL.
    # precision fp32: the numbers below were measured in fp32 (bf16 at equal updates: Dice within the
    # seed-to-seed spread, benchmarks/learner_speed.py).
    cfg = dict(width=8, depth=2, num_envs=4, keep_bias=0.0, lr=3e-3, warmup_frac=0.8, value_frac=0.1,
               precision="fp32")
    untrained = VA3CPolicy.untrained(ENV16, seed=0, **cfg)
    trained = train_va3c(ENV16, updates=20, seed=0, progress=False, **cfg)
    d_untrained, d_ann = _mean_dice(untrained)
    d_trained, _ = _mean_dice(trained)
    # measured (2 CPU threads): untrained 0.208, annotation 0.456; trained after 20 updates 0.630
    # (seed 1: 0.579) on an AMD EPYC. 12 updates were too few to hold on every CPU: 0.491 on an
    # Intel Xeon, 0.469 on the EPYC (fp32 kernels differ between CPUs), against a +0.02 margin.
    # Stated margins: +0.15 over the untrained policy, +0.05 over the noisy annotation it starts from.
    assert d_trained >= d_untrained + 0.15, (d_trained, d_untrained, d_ann)
    assert d_trained >= d_ann + 0.05, (d_trained, d_untrained, d_ann)


# ----------------------------------------------------------------------------- checkpoints
def test_policy_checkpoint_roundtrip_and_kind_check(tmp_path):
    pol = VA3CPolicy.untrained(ENV16, seed=3, **TINY)
    path = pol.save(tmp_path / "p.pt")
    # plain weights_only load works: the file holds only tensors and strings
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "va3c"
    back = VA3CPolicy.load(path)
    obs = np.random.default_rng(0).random((2, 6, 16, 16, 16), dtype=np.float32)
    assert np.array_equal(pol.act(obs), back.act(obs))
    other = save_checkpoint(tmp_path / "ppo.pt", "ppo", {"x": 1}, {"model": {"w": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="kind 'ppo'"):
        VA3CPolicy.load(other)
    with pytest.raises(FileNotFoundError):
        VA3CPolicy.load(tmp_path / "missing.pt")


def test_run_checkpoint_holds_training_state(tmp_path):
    # also exercises the ConvGRU policy branch through both the warmup and the actor-critic update
    pol = train_va3c(ENV16, updates=2, seed=0, progress=False, out=tmp_path / "run", warmup_frac=0.5, value_frac=0.0,
                     convgru=True, **TINY)
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt", "va3c")
    assert set(ck["tensors"]) >= {"model", "optimizer", "reward_conv"}
    assert ck["meta"]["update"] == 2
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "run" / "metrics.csv").is_file()
    back = VA3CPolicy.load(tmp_path / "run")
    assert back.net.gru is not None and isinstance(pol, VA3CPolicy)
    obs = np.random.default_rng(1).random((2, 6, 16, 16, 16), dtype=np.float32)
    assert np.array_equal(back.act(obs), pol.act(obs))


# ----------------------------------------------------------------------------- resume
def test_resume_equals_uninterrupted_run(tmp_path):
    cfg = dict(TINY, warmup_frac=0.25, value_frac=0.25, warmup_reuse=2)  # updates: W, V, P, P
    full = VA3CRun(ENV16, budget=Budget(updates=4), seed=7, config=cfg)
    full.run()
    # the same run, interrupted after update 2 (checkpoint written), then resumed
    from agents.va3c.train import run_training

    run_training(ENV16, updates=4, seed=7, out=tmp_path / "r", progress=False, _stop_after=2, **cfg)
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt", "va3c")["meta"]["update"] == 2
    _, _, resumed = run_training({}, resume=tmp_path / "r", progress=False)
    assert resumed.update == 4
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["stage"] for h in full.history] == ["warmup", "value", "policy", "policy"]
    assert full.history[-1]["loss"] == resumed.history[-1]["loss"]
    rows = (tmp_path / "r" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header + one row per update, none duplicated by the resume


# ----------------------------------------------------------------------------- async
def test_async_workers_train():
    run = VA3CRun(ENV16, budget=Budget(updates=4), seed=0, workers=2, config=dict(TINY, warmup_frac=0.5, threads=1))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.run()
    assert run.update >= 4 and len(run.history) == 4
    assert {h["worker"] for h in run.history} <= {0, 1}
    changed = [k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the shared model was updated by the workers


@pytest.mark.parametrize("mode,workers", [("raise", 1), ("exit", 1)])
def test_async_worker_crash_surfaces(mode, workers):
    # worker 0 fails before its first update: by an exception (reported through the queue)
    # or by dying outright (detected from its exit code); the main process must raise, not hang
    run = VA3CRun(ENV16, budget=Budget(updates=50), seed=0, workers=workers,
                  config=dict(TINY, threads=1, _crash_after=0, _crash_mode=mode))
    with pytest.raises(RuntimeError, match="worker"):
        run.run()
