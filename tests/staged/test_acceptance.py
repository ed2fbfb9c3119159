"""The acceptance step of a label-refinement round (``label_refinement.accept_proposals``).

Hand-made labels, proposals and decoder probabilities: no training. The case the rules differ
on is the one the real-anatomy check of issue 16 met: every annotation noisy in the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from agents.staged.harness import make_train_config
from agents.staged.label_refinement import accept_proposals

SHAPE = (16, 16, 16)


def _ball(r, c=(8, 8, 8)):
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r ** 2


def _all_noisy(n=8):
    """n cases whose truth is a ball; every given label dilated (even cases) or eroded (odd) by one
    voxel; the proposals restore the truth; the decoder's probability is the truth, softened."""
    truths = [_ball(4.5 + 0.25 * i) for i in range(n)]
    labels = [ndi.binary_dilation(t) if i % 2 == 0 else ndi.binary_erosion(t) for i, t in enumerate(truths)]
    probs = [np.where(t, 0.8, 0.2).astype(np.float32) for t in truths]
    return truths, labels, [t.copy() for t in truths], probs


def _dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_consensus_rule_edits_every_case_when_every_case_is_noisy():
    truths, labels, proposals, probs = _all_noisy()
    out, info = accept_proposals(labels, proposals, probs, make_train_config(accept="consensus"))
    assert info["rule"] == "consensus"
    assert info["n_accepted"] == len(labels)
    for o, t, lab in zip(out, truths, labels):
        assert _dice(o, t) == 1.0 > _dice(lab, t)
    # dilated cases shrink, eroded ones grow
    assert all(info["removed"][i] > 0 and info["added"][i] == 0 for i in range(0, 8, 2))
    assert all(info["added"][i] > 0 and info["removed"][i] == 0 for i in range(1, 8, 2))


def test_zscore_rule_needs_clean_peers():
    """The previous rule: with every case off alike, no case stands out and nothing is edited."""
    truth = _ball(5.0)
    truths = [truth] * 8
    labels = [ndi.binary_dilation(truth)] * 8  # every case dilated alike
    proposals = [truth.copy() for _ in truths]
    probs = [np.where(truth, 0.8, 0.2).astype(np.float32)] * 8
    out, info = accept_proposals(labels, proposals, probs, make_train_config(accept="zscore"))
    assert info["n_accepted"] == 0
    assert all(np.array_equal(o, lab) for o, lab in zip(out, labels))
    for rule in ("consensus", "average"):  # the peer-free rules edit every case
        out, info = accept_proposals(labels, proposals, probs, make_train_config(accept=rule))
        assert info["n_accepted"] == len(labels)
    assert make_train_config()["accept"] == "average"


def test_consensus_rule_keeps_edits_the_decoder_disputes():
    truths, labels, proposals, probs = _all_noisy(2)
    # the decoder says the dilated case 0 is right: its shrinking edit is refused
    probs[0] = np.where(labels[0], 0.9, 0.1).astype(np.float32)
    # the proposal for case 1 also adds a far-away voxel the decoder does not see
    proposals[1][0, 0, 0] = True
    out, info = accept_proposals(labels, proposals, probs, make_train_config(accept="consensus"))
    assert np.array_equal(out[0], labels[0])
    assert not out[1][0, 0, 0] and _dice(out[1], truths[1]) == 1.0
    assert info["accepted"] == [1]


def test_all_rule_and_bad_rule():
    _, labels, proposals, probs = _all_noisy(3)
    out, _ = accept_proposals(labels, proposals, probs, make_train_config(accept="all"))
    assert all(np.array_equal(o, p) for o, p in zip(out, proposals))
    with pytest.raises(ValueError, match="accept must be one of"):
        make_train_config(accept="majority")


def test_average_rule_lets_the_more_confident_estimator_win():
    truths, labels, proposals, probs = _all_noisy(2)
    soft = [np.where(p, 0.9, 0.1).astype(np.float32) for p in proposals]  # confident agents
    out, info = accept_proposals(labels, soft, probs, make_train_config(accept="average"))
    assert info["rule"] == "average" and info["n_accepted"] == 2
    assert all(_dice(o, t) == 1.0 for o, t in zip(out, truths))
    # an unsure proposal (0.45 on the voxels the label misses) loses to a decoder at 0.2 there ...
    soft[1] = np.where(labels[1], 0.9, np.where(truths[1], 0.45, 0.05)).astype(np.float32)
    probs[1] = np.where(labels[1], 0.8, 0.2).astype(np.float32)
    out, _ = accept_proposals(labels, soft, probs, make_train_config(accept="average"))
    assert np.array_equal(out[1], labels[1])
    # ... and wins against one at 0.6 (mean 0.525 > 0.5)
    probs[1] = np.where(truths[1], 0.6, 0.1).astype(np.float32)
    out, _ = accept_proposals(labels, soft, probs, make_train_config(accept="average"))
    assert np.array_equal(out[1], truths[1])


def test_agents_rule_takes_the_agents_probability_alone():
    truths, labels, proposals, probs = _all_noisy(2)
    soft = [np.where(t, 0.6, 0.3).astype(np.float32) for t in truths]  # agents: truth, not confident
    probs = [np.where(lab, 0.9, 0.1).astype(np.float32) for lab in labels]  # decoder: learnt the noise
    out, info = accept_proposals(labels, soft, probs, make_train_config(accept="agents"))
    assert info["rule"] == "agents" and info["n_accepted"] == 2
    assert all(_dice(o, t) == 1.0 for o, t in zip(out, truths))
    # the average of the two keeps the noisy labels: the confident decoder outvotes the agents
    out, _ = accept_proposals(labels, soft, probs, make_train_config(accept="average"))
    assert all(np.array_equal(o, lab) for o, lab in zip(out, labels))
