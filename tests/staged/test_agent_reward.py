"""The label agents' training reward (``agent_reward``; ``LabelAgentEpisodes(reward=)``): the
environment's Dice composite, or the balanced voxel term that pays a found foreground voxel and a
removed false positive alike. Same tiny Decathlon folder as test_controls."""

from __future__ import annotations

import pytest
import torch

import test_controls
from test_controls import MODEL

folder = test_controls.folder  # the controls' tiny Decathlon folder (a module-scoped fixture)


def _episode_signals(folder, monkeypatch, reward, weights=None):
    """The per-voxel rewards and counterfactual action rewards one batch of episodes trains on."""
    import agents.staged.label_refinement as lr
    from agents.staged.data import load_training_set
    from agents.staged.losses import seg_loss
    from agents.staged.model import make_model

    seen = {}
    real = lr.actor_critic_losses

    def spy(logits, actions, values, rewards, gamma, bootstrap, qs, *args):
        seen["rewards"], seen["qs"] = torch.stack(rewards), torch.stack(qs)
        return real(logits, actions, values, rewards, gamma, bootstrap, qs, *args)

    monkeypatch.setattr(lr, "actor_critic_losses", spy)
    ts = load_training_set(folder[0], progress=False)
    ep = lr.LabelAgentEpisodes(ts, num_envs=4, patch_shape=(16, 16, 16), max_steps=2, reward=reward,
                               reward_weights=weights)
    out = ep.run(make_model(MODEL, seed=0), seed=5, seg_loss_fn=seg_loss)
    assert torch.isfinite(out["policy_loss"]) and torch.isfinite(out["value_loss"])
    return seen["rewards"], seen["qs"]


def test_balanced_reward_pays_both_directions_alike(folder, monkeypatch):
    no_continuity = {"w_cont": 0.0}
    rewards, qs = _episode_signals(folder, monkeypatch, "balanced", no_continuity)
    # every flip earns exactly +-1/2 (w_dice = 1), whether it adds foreground or removes it
    assert set(torch.unique(rewards).tolist()) <= {-0.5, 0.0, 0.5}
    add, remove = qs[:, :, 1], qs[:, :, 2]  # set_foreground, set_background
    assert set(torch.unique(add).tolist()) == {-0.5, 0.0, 0.5} == set(torch.unique(remove).tolist())
    assert torch.all(qs[:, :, 0] == 0)  # keep changes nothing
    # the environment's Dice reward pays a found foreground voxel more than a removed false positive
    _, qs_dice = _episode_signals(folder, monkeypatch, "dice", no_continuity)
    gain_add, gain_remove = qs_dice[:, :, 1], qs_dice[:, :, 2]
    assert gain_add[gain_add > 0].mean() > 1.2 * gain_remove[gain_remove > 0].mean()
    # the continuity term stays in the balanced reward
    with_continuity, _ = _episode_signals(folder, monkeypatch, "balanced")
    assert not set(torch.unique(with_continuity).tolist()) <= {-0.5, 0.0, 0.5}


def test_agent_reward_is_validated():
    from agents.staged.harness import make_train_config
    from agents.staged.label_refinement import LabelAgentEpisodes

    assert make_train_config()["agent_reward"] == "dice"
    with pytest.raises(ValueError, match="agent_reward"):
        make_train_config(agent_reward="accuracy")
    with pytest.raises(ValueError, match="agent reward"):
        LabelAgentEpisodes(None, num_envs=1, patch_shape=(8, 8, 8), reward="accuracy")
