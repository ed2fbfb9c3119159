"""voxel-PPO (agents/voxel_ppo.py): it learns from the per-voxel reward map, round-trips through
its checkpoint and is a registered agent of ``svl-drl train``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import registry
from agents.cli import main
from agents.common.checkpoint import CheckpointError, load_checkpoint
from agents.eval.refine import load_policy as refine_load_policy
from agents.heuristics import IdentityPolicy
from agents.va3c import VA3CPolicy
from agents.voxel_ppo import Args, VoxelPPOPolicy, compute_advantages, train

ENV = {"patch_size": 16}
UPDATES = 20  # ~0.6 s each on one core at 16^3



def test_voxel_ppo_learns_a_margin_over_identity_and_round_trips(tmp_path, one_thread, held_out_dice):
    run = tmp_path / "run"
    policy = train(env_kwargs=ENV, seed=0, out=run, progress=False, updates=UPDATES, num_envs=8)
    ident, learned = held_out_dice(IdentityPolicy(), ENV), held_out_dice(policy, ENV)
    assert learned > ident + 0.05, (learned, ident)

    assert load_checkpoint(run / "checkpoint.pt")["kind"] == "voxel-ppo"
    assert (run / "metrics.csv").read_text().count("\n") == UPDATES + 1
    loaded, spec = registry.load_policy(run)
    assert spec.name == "voxel-ppo" and isinstance(loaded, VoxelPPOPolicy)
    obs = torch.rand(2, 6, 16, 16, 16)
    assert np.array_equal(loaded.act(obs), policy.act(obs))
    with pytest.raises(CheckpointError, match="kind 'voxel-ppo'"):
        VA3CPolicy.load(run)


def test_gae_per_voxel_matches_the_recursion():
    """Two steps, one voxel per case: A_1 = r_1 - V_1 (the episode ends), A_0 = δ_0 + γλ A_1."""
    args = Args(gamma=0.5, gae_lambda=0.8)
    r = torch.tensor([[[[[1.0]]]], [[[[2.0]]]]])  # (T=2, B=1, 1, 1, 1)
    v = torch.tensor([[[[[0.5]]]], [[[[1.5]]]]])
    adv, ret = compute_advantages(r, v, args)
    a1 = 2.0 - 1.5
    a0 = (1.0 + 0.5 * 1.5 - 0.5) + 0.5 * 0.8 * a1
    assert torch.allclose(adv.flatten(), torch.tensor([a0, a1]))
    assert torch.allclose(ret, adv + v)
    # the counterfactual baseline replaces V(s_t) - γ V(s_{t+1}) by Σ_a π_a Q_a
    expected = torch.full_like(r, 0.25)
    adv_cf, ret_cf = compute_advantages(r, v, args, expected)
    assert torch.allclose(adv_cf.flatten(), torch.tensor([0.75 + 0.4 * 1.75, 1.75]))
    assert torch.allclose(ret_cf, ret)  # the value head's targets do not depend on the baseline


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown voxel-PPO option"):
        train(env_kwargs=ENV, updates=1, progress=False, lr_typo=1.0)
    with pytest.raises(ValueError, match="baseline must be"):
        Args(baseline="mean")


def test_train_cli_sees_the_agent(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--agent", "voxel-ppo", "--help"])
    assert exc.value.code == 0
    run = tmp_path / "run"
    assert main(["train", "--agent", "voxel-ppo", "--updates", "1", "--num-envs", "2", "--patch-size", "12",
                 "--out", str(run), "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["config"]["train"]["num_envs"] == 2
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "2", "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    pol, env = refine_load_policy(run)  # what `svl-drl refine --checkpoint RUN` loads
    assert isinstance(pol, VoxelPPOPolicy) and env.patch_size == 12
