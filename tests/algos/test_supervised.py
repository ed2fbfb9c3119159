"""The ``supervised`` control: vA3C's network and Warmup loss only, registered as its own agent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import registry
from agents.cli import main
from agents.common.checkpoint import CheckpointError, load_checkpoint
from agents.eval.refine import load_policy as refine_load_policy
from agents.heuristics import IdentityPolicy
from agents.supervised import SupervisedPolicy, SupervisedRun, train_supervised
from agents.va3c import Budget, VA3CPolicy

ENV = {"patch_size": 16}



def test_supervised_learns_a_margin_over_identity_and_round_trips(tmp_path, one_thread, held_out_dice):
    run = tmp_path / "run"
    policy = train_supervised(ENV, updates=30, seed=0, out=run, progress=False, num_envs=4)
    assert isinstance(policy, SupervisedPolicy)
    ident, learned = held_out_dice(IdentityPolicy(), ENV), held_out_dice(policy, ENV)
    assert learned > ident + 0.06, (learned, ident)

    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["kind"] == "supervised"
    assert not ck["config"]["train"]["value"] and not ck["config"]["train"]["policy"]
    loaded, spec = registry.load_policy(run)
    assert spec.name == "supervised" and isinstance(loaded, SupervisedPolicy)
    obs = torch.rand(2, 6, 16, 16, 16)
    assert np.array_equal(loaded.act(obs), policy.act(obs))
    with pytest.raises(CheckpointError, match="kind 'supervised'"):
        VA3CPolicy.load(run)  # told apart from vA3C's checkpoints, both ways


def test_a_va3c_checkpoint_still_loads_as_va3c(tmp_path):
    VA3CPolicy.untrained(ENV).save(tmp_path / "checkpoint.pt")
    pol, spec = registry.load_policy(tmp_path)
    assert spec.name == "va3c" and type(pol) is VA3CPolicy
    with pytest.raises(CheckpointError, match="kind 'va3c'"):
        SupervisedPolicy.load(tmp_path)


def test_rl_stages_are_refused():
    with pytest.raises(ValueError, match="Warmup stage only"):
        SupervisedRun(ENV, budget=Budget(updates=1), config={"policy": True})


def test_train_cli_sees_the_agent(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--agent", "supervised", "--help"])
    assert exc.value.code == 0
    run = tmp_path / "run"
    assert main(["train", "--agent", "supervised", "--updates", "2", "--num-envs", "2", "--patch-size", "16",
                 "--out", str(run), "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["kind"] == "supervised"
    pol, env = refine_load_policy(run)  # what `svl-drl refine --checkpoint RUN` loads
    assert isinstance(pol, SupervisedPolicy) and env.patch_size == 16
    assert main(["train", "--agent", "supervised", "--resume", str(run), "--updates", "3", "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["meta"]["update"] == 3
