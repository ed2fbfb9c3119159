"""The cross-fit stage (``crossfit_frac``; agents.staged.crossfit): folds, out-of-fold networks,
and the consensus that the label agents and the acceptance rules read. Same tiny Decathlon
folder as test_pipeline, a few updates, a 4-channel U-Net, one thread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import test_controls
from agents.cli import main
from test_controls import MODEL, TINY
from test_pipeline import FAST

folder = test_controls.folder  # the controls' tiny Decathlon folder (a module-scoped fixture)


@pytest.fixture()
def ts(folder):  # a fresh set per test: the tests set its consensus
    from agents.staged.data import load_training_set

    return load_training_set(folder[0], progress=False)


def record_consensus(monkeypatch) -> list:
    """Record the consensus (``seg_prob``) of every label-agent state built
    (``label_refinement.state_channels``); returns the list the calls append to."""
    import agents.staged.label_refinement as lr

    seen = []
    real = lr.state_channels
    monkeypatch.setattr(lr, "state_channels", lambda m, s, p, t, n: (seen.append(p.clone()), real(m, s, p, t, n))[1])
    return seen


def test_fold_split_partitions_the_cases_reproducibly():
    from agents.staged.crossfit import fold_split

    folds = fold_split(7, 2, seed=3)
    assert sorted(i for f in folds for i in f) == list(range(7)) and sorted(map(len, folds)) == [3, 4]
    assert fold_split(7, 2, seed=3) == folds and fold_split(7, 2, seed=4) != folds
    with pytest.raises(ValueError, match="folds"):
        fold_split(3, 4, seed=0)


def test_each_case_is_predicted_by_the_network_that_did_not_train_on_it(ts):
    from agents.staged.crossfit import CrossFit
    from agents.staged.harness import make_train_config

    cf = CrossFit(ts, make_train_config(**TINY), MODEL, seed=0, device="cpu")
    for j, fold in enumerate(cf.folds):  # network j trains on the cases outside fold j
        assert set(cf.subsets[j].names) == {ts.names[i] for i in range(len(ts)) if i not in fold}
    for u in range(4):
        cf.update(u, 1e-3, seed=u)
    # poison network 1: only the cases of fold 1 may show it
    with torch.no_grad():
        cf.emas[1].shadow["seg_head.bias"].fill_(-50.0)
    oof = cf.out_of_fold()
    assert [p.shape for p in oof] == [img.shape for img in ts.images]
    for i, p in enumerate(oof):
        assert (p.max() < 1e-6) == (i in cf.folds[1])


def test_the_agents_read_the_consensus_in_episodes_and_refinement(ts, monkeypatch):
    from agents.staged.label_refinement import LabelAgentEpisodes, refine_volume
    from agents.staged.losses import seg_loss
    from agents.staged.model import make_model

    seen = record_consensus(monkeypatch)
    model = make_model(MODEL, seed=0)
    ts.consensus = [np.full(img.shape, 0.25, np.float32) for img in ts.images]
    LabelAgentEpisodes(ts, num_envs=2, patch_shape=(16, 16, 16), max_steps=2).run(model, 0, seg_loss)
    refine_volume(model, ts.images[0], ts.given[0], max_steps=2, window=16, consensus=ts.consensus[0])
    assert len(seen) >= 3 and all(torch.allclose(p, torch.full_like(p, 0.25)) for p in seen)
    seen.clear()
    ts.consensus = None  # without one: the segmentation decoder's own probability
    LabelAgentEpisodes(ts, num_envs=2, patch_shape=(16, 16, 16), max_steps=2).run(model, 0, seg_loss)
    assert seen and not torch.allclose(seen[0], torch.full_like(seen[0], 0.25))


def test_self_training_pools_its_prediction_with_the_consensus(ts):
    from agents.staged.harness import make_train_config
    from agents.staged.methods.self_training import SelfTrainingRun
    from agents.staged.methods.svl_drl import stage_plan
    from agents.staged.model import make_model
    from agents.common.budget import Budget

    cfg = make_train_config(**TINY)
    run = SelfTrainingRun(make_model({**MODEL, "agents": False}, seed=0), ts, stage_plan(["warmup"], cfg), cfg,
                          Budget(updates=1), 0, "cpu", False)

    class Bar:
        def update(self, n):
            pass

    # average rule: (p_decoder + p_consensus) / 2 > 0.5 -- a consensus of 0 empties every label,
    # one of 1 fills every voxel where the decoder gives more than 0
    ts.consensus = [np.zeros(img.shape, np.float32) for img in ts.images]
    labels, _ = run.round_labels_of(Bar())
    assert not any(lab.any() for lab in labels)
    ts.consensus = [np.ones(img.shape, np.float32) for img in ts.images]
    labels, _ = run.round_labels_of(Bar())
    assert all(lab.mean() > 0.99 for lab in labels)


@pytest.mark.parametrize("method", ["svl-drl", "self-training"])
def test_crossfit_through_the_cli(folder, tmp_path, method):
    """``--crossfit F``: the first F of the budget trains the fold networks (the main model's
    updates start after it), the report names the folds, and the run resets the consensus."""
    data, _ = folder
    out = tmp_path / "run"
    assert main(["pipeline", "--data", str(data), "--out", str(out), "--method", method, "--crossfit", "0.25",
                 "--refit", "0.25", *[a if a != "8" else "12" for a in FAST]]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stage_plan"]] == ["crossfit", "warmup", "transition", "full", "refit"]
    cf = [e for e in report["entries"] if e["stage"] == "crossfit"]
    assert len(cf) == 1 and cf[0]["first_update"] == 0 and cf[0]["updates"] == 3
    assert 0.0 <= cf[0]["pred_vs_given_dice"] <= 1.0  # the out-of-fold predictions' agreement
    folds = report["crossfit_folds"]
    assert len(folds) == 2 and sorted(n for f in folds for n in f) == sorted(report["cases"])
    assert report["config"]["crossfit_frac"] == 0.25


def test_crossfit_options_are_validated(folder, tmp_path, capsys):
    from agents.staged.harness import make_train_config

    with pytest.raises(ValueError, match="crossfit_frac"):
        make_train_config(crossfit_frac=0.5, warmup_frac=0.3, refit_frac=0.3)
    with pytest.raises(ValueError, match="crossfit_folds"):
        make_train_config(crossfit_folds=1)
    with pytest.raises(ValueError, match="agent_target"):
        make_train_config(crossfit_frac=0.2, agent_target="current")
    assert main(["pipeline", "--data", str(folder[0]), "--out", str(tmp_path / "r"), "--crossfit", "2",
                 *FAST]) == 2
    assert "crossfit_frac" in capsys.readouterr().err


def test_agent_consensus_none_gives_the_agents_a_constant(folder, tmp_path, monkeypatch):
    """``--set agent_consensus=none``: every consensus the label agents read, in their episodes and
    in the round's refinement, is 0.5; no cross-fit stage runs. It is validated against
    ``crossfit_frac`` and ``agent_target``."""
    from agents.staged.harness import make_train_config

    seen = record_consensus(monkeypatch)
    out = tmp_path / "run"
    assert main(["pipeline", "--data", str(folder[0]), "--out", str(out), "--refit", "0.25",
                 "--set", "agent_consensus=none", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "crossfit" not in [s["stage"] for s in report["stage_plan"]] and report["refinements"]
    assert len(seen) >= 2 and all(torch.equal(p, torch.full_like(p, 0.5)) for p in seen)
    seen.clear()
    assert main(["pipeline", "--data", str(folder[0]), "--out", str(tmp_path / "model"), "--refit", "0.25",
                 *FAST]) == 0  # the default: the decoder's own probability
    assert seen and not all(torch.equal(p, torch.full_like(p, 0.5)) for p in seen)
    with pytest.raises(ValueError, match="crossfit_frac 0"):
        make_train_config(agent_consensus="none", crossfit_frac=0.2)
    with pytest.raises(ValueError, match="agent_target"):
        make_train_config(agent_consensus="none", agent_target="current")
    with pytest.raises(ValueError, match="agent_consensus must be one of"):
        make_train_config(agent_consensus="oracle")
