"""Flip averaging of refinement candidates (``refine_flips``; ``agents.common.windows.flip_mean``):
the mean over flipped copies, each flipped back, and its wiring into the agents' proposals and
self-training's predictions. Same tiny Decathlon folder as test_controls."""

from __future__ import annotations

import numpy as np
import pytest

import test_controls
from test_controls import MODEL

folder = test_controls.folder  # the controls' tiny Decathlon folder (a module-scoped fixture)


def count_flips(monkeypatch, *modules) -> list[int]:
    """Record the flip count of every ``flip_mean`` call, through ``agents.common.windows`` and
    each of ``modules`` (which import the name); returns the list the calls append to."""
    import agents.common.windows as windows

    real, calls = windows.flip_mean, []

    def counting(fn, vols, flips=1):
        calls.append(flips)
        return real(fn, vols, flips)

    for m in (windows, *modules):
        monkeypatch.setattr(m, "flip_mean", counting)
    return calls


def test_flip_mean_undoes_each_flip():
    from agents.common.windows import FLIPS, flip_mean

    vol = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    for n in FLIPS:  # an orientation-blind function: every copy flips back onto the original
        assert np.allclose(flip_mean(lambda vs: vs[0] * 2, [vol], n), vol * 2)
    # a function that sees only where a voxel sits: the copies average the position away
    def ramp(vs):
        return np.broadcast_to(np.arange(vs[0].shape[0], dtype=np.float32)[:, None, None], vs[0].shape)

    assert np.allclose(flip_mean(ramp, [vol], 1)[:, 0, 0], np.arange(5))
    assert np.allclose(flip_mean(ramp, [vol], 2), 2.0)  # (i + (4 - i)) / 2
    # several volumes are flipped alike, and a leading channel axis is kept
    both = flip_mean(lambda vs: np.stack([vs[0], vs[1]]), [vol, -vol], 8)
    assert both.shape == (2, 5, 6, 7) and np.allclose(both[1], -vol)
    with pytest.raises(ValueError, match="flips"):
        flip_mean(lambda vs: vs[0], [vol], 3)


def test_refinement_candidates_are_flip_means(folder, monkeypatch):
    """svl-drl's proposals and self-training's predictions go through ``flip_mean`` with
    ``refine_flips`` copies; a bad value is refused."""
    from agents.common.budget import Budget
    from agents.staged.data import load_training_set
    from agents.staged.harness import make_train_config
    from agents.staged.label_refinement import refine_labels
    from agents.staged.methods.self_training import SelfTrainingRun
    from agents.staged.methods.svl_drl import stage_plan
    from agents.staged.model import make_model

    with pytest.raises(ValueError, match="refine_flips"):
        make_train_config(refine_flips=3)
    ts = load_training_set(folder[0], progress=False)
    import agents.staged.label_refinement as lr
    import agents.staged.segment as seg

    counts = count_flips(monkeypatch, lr, seg)
    cfg = make_train_config(refine_flips=4, window=16, patch=16)
    refine_labels(make_model(MODEL, seed=0), ts, cfg=cfg)
    assert counts and set(counts) == {4}  # agents' proposals and the decoder's probability
    counts.clear()
    run = SelfTrainingRun(make_model({**MODEL, "agents": False}, seed=0), ts, stage_plan(["warmup"], cfg), cfg,
                          Budget(updates=1), 0, "cpu", False)

    class Bar:
        def update(self, n):
            pass

    labels, _ = run.round_labels_of(Bar())
    assert counts == [4] * len(ts) and [lab.shape for lab in labels] == [img.shape for img in ts.images]
