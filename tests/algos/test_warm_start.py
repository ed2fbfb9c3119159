"""Warm starts (``init_from``): vA3C, voxel-PPO and SB3 PPO start from a ``supervised``
checkpoint's network, train from there, record it; a checkpoint of another network shape is
refused with one clear line (Python and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents.cli import main
from agents.common.checkpoint import load_checkpoint
from agents.supervised import SupervisedPolicy, train_supervised
from agents.va3c import Budget, VA3CRun, train_va3c
from agents.voxel_ppo import train as train_voxel_ppo

ENV = {"patch_size": 12, "max_steps": 2}
SHAPE_ERROR = r"init_from .*checkpoint\.pt: its network \(backbone=unet width=8 depth=3 .*\) is not the shape of " \
              r"this run's \(backbone=unet width=4 depth=3 "


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A supervised run folder (2 updates: trained weights, not the seed's init)."""
    run = tmp_path_factory.mktemp("warm") / "supervised"
    train_supervised(ENV, updates=2, seed=1, out=run, progress=False, num_envs=2, precision="fp32")
    return run


def _weights(run):
    return load_checkpoint(run / "checkpoint.pt")["tensors"]["model"]


def _same(sd, ref) -> bool:
    return sd.keys() == ref.keys() and all(torch.equal(sd[k].cpu(), ref[k]) for k in ref)


def test_va3c_starts_from_the_checkpoint_skips_warmup_and_trains(checkpoint, tmp_path):
    run = VA3CRun(ENV, budget=Budget(updates=1), seed=0, config={"num_envs": 2}, init_from=checkpoint)
    assert _same(run.model.net.state_dict(), _weights(checkpoint))  # before any update
    assert not run.cfg["warmup"] and run.cfg["value"] and run.cfg["policy"]

    out = tmp_path / "va3c"
    policy = train_va3c(ENV, updates=3, seed=0, out=out, progress=False, num_envs=2, precision="fp32",
                        init_from=checkpoint)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["init_from"]["kind"] == "supervised" and cfg["init_from"]["path"].endswith("checkpoint.pt")
    assert cfg["stages"] == {"value": [0.0, 0.1], "policy": [0.1, 1.0]}  # the RL stages share the whole budget
    stages = [line.split(",")[1] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert stages == ["value", "policy", "policy"]
    assert load_checkpoint(out / "checkpoint.pt")["config"]["init_from"] == cfg["init_from"]  # survives --resume
    trained = policy.net.state_dict()
    assert not _same(trained, _weights(checkpoint)) and all(torch.isfinite(v).all() for v in trained.values())


def test_va3c_from_scratch_records_no_init(tmp_path):
    train_va3c(ENV, updates=1, out=tmp_path, progress=False, num_envs=2, precision="fp32")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["init_from"] is None and cfg["stages"] == {"warmup": [0.0, 0.6], "value": [0.6, 0.7],
                                                          "policy": [0.7, 1.0]}
    assert "init_from" not in load_checkpoint(tmp_path / "checkpoint.pt")["config"]


def test_voxel_ppo_starts_from_the_checkpoint_and_trains(checkpoint, tmp_path):
    # lr 0: the update leaves the weights where they started, so the policy shows the initial weights
    still = train_voxel_ppo(env_kwargs=ENV, updates=1, progress=False, num_envs=2, precision="fp32", lr=0.0,
                            init_from=checkpoint)
    assert _same(still.net.state_dict(), _weights(checkpoint))
    out = tmp_path / "vppo"
    policy = train_voxel_ppo(env_kwargs=ENV, updates=2, out=out, progress=False, num_envs=2, precision="fp32",
                             init_from=checkpoint)
    trained = policy.net.state_dict()
    assert not _same(trained, _weights(checkpoint)) and all(torch.isfinite(v).all() for v in trained.values())
    assert json.loads((out / "config.json").read_text())["init_from"]["kind"] == "supervised"


def test_sb3_ppo_starts_with_the_checkpoints_backbone_and_logits(checkpoint, tmp_path):
    from agents.sb3 import train_sb3

    out = tmp_path / "ppo"
    policy = train_sb3("ppo", ENV, timesteps=2, seed=0, out=out, progress=False, num_envs=2, learning_rate=0.0,
                       init_from=checkpoint)
    net = policy.model.policy
    assert (net.backbone_kind, net.width, net.depth) == ("unet", 8, 3)  # the checkpoint's, not SB3's defaults
    obs = torch.rand(2, 6, *[ENV["patch_size"]] * 3)
    with torch.no_grad():
        logits = net.action_net(net.features_extractor(obs))
    ref, _ = SupervisedPolicy.load(checkpoint).logits_value(obs)
    assert torch.allclose(logits, ref, atol=1e-5)
    assert np.array_equal(policy.act(obs), ref.argmax(1).numpy())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["init_from"]["kind"] == "supervised" and cfg["policy_kwargs"]["width"] == 8


def test_another_network_shape_is_refused_with_one_line(checkpoint):
    from agents.sb3 import train_sb3

    for build in (lambda: VA3CRun(ENV, budget=Budget(updates=1), config={"width": 4}, init_from=checkpoint),
                  lambda: train_voxel_ppo(env_kwargs=ENV, updates=1, progress=False, width=4, init_from=checkpoint),
                  lambda: train_sb3("ppo", ENV, timesteps=2, progress=False, width=4, init_from=checkpoint)):
        with pytest.raises(ValueError, match=SHAPE_ERROR) as exc:
            build()
        assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="n_actions=4.*n_actions=3"):  # the intensity action set has 3 actions
        VA3CRun({**ENV, "action_set": "intensity"}, budget=Budget(updates=1), init_from=checkpoint)


def test_cli_init_from(checkpoint, tmp_path, capsys):
    narrow = tmp_path / "narrow"
    train_supervised(ENV, updates=1, out=narrow, progress=False, num_envs=2, width=4, precision="fp32")
    capsys.readouterr()
    argv = ["train", "--agent", "va3c", "--updates", "1", "--num-envs", "2", "--patch-size", "12", "--max-steps",
            "2", "--no-progress", "--precision", "fp32", "--out", str(tmp_path / "bad"), "--init-from", str(narrow)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "width=4" in err[0] and "width=8" in err[0], err
    assert not (tmp_path / "bad").exists()  # refused before anything was written

    ok = tmp_path / "ok"
    assert main([*argv[:-3], str(ok), "--init-from", str(checkpoint)]) == 0
    assert json.loads((ok / "config.json").read_text())["init_from"]["kind"] == "supervised"
    assert main(["train", "--agent", "rllib-ppo", "--init-from", str(checkpoint), "--out", str(tmp_path / "r")]) == 2
    assert "--init-from applies to" in capsys.readouterr().err
