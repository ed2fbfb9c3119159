"""Heuristic policies: exact behaviour on hand-made volumes, and their effect in the env."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from agents.eval.episodes import run_episodes
from agents.heuristics import (ORACLE_NAME, Closing, IdentityPolicy, IntensityRefiner, MajorityFilter, OraclePolicy,
                               Opening, RandomPolicy, actions_towards, dilate, erode, make_heuristic, majority)
from svl_env import CHANNEL_NAMES, LABEL_ACTIONS, SVLDRLVectorEnv

KEEP, SET_FG, SET_BG, MAJ = range(4)
ENV = dict(patch_size=12, max_steps=2)


def _obs(image, annotation, mask=None):
    """(B, C, D, H, W) observation from (B, D, H, W) image / annotation (mask defaults to it)."""
    mask = annotation if mask is None else mask
    ch = {"image": image, "mask": mask, "annotation": annotation,
          "image_mean3": image, "mask_mean3": mask, "time": torch.zeros_like(image)}
    return torch.stack([ch[c] for c in CHANNEL_NAMES], 1).numpy()


def _cube(n=12, lo=3, hi=9):
    m = torch.zeros(1, n, n, n)
    m[:, lo:hi, lo:hi, lo:hi] = 1
    return m


def test_action_indices_match_env():
    assert LABEL_ACTIONS[KEEP] == "keep" and LABEL_ACTIONS[SET_FG] == "set_foreground"
    assert LABEL_ACTIONS[SET_BG] == "set_background" and LABEL_ACTIONS[MAJ] == "majority"


def test_actions_towards_reaches_target_in_env():
    env = SVLDRLVectorEnv(3, autoreset_mode=AutoresetMode.DISABLED, **ENV)
    env.reset(seed=0)
    s = env.state_tensors()
    target = (torch.rand(s["mask"].shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    a = actions_towards(s["mask"], target)
    assert a.dtype == np.int64 and a.shape == (3, 12, 12, 12)
    assert set(np.unique(a)) <= {KEEP, SET_FG, SET_BG}
    env.step(a)
    assert torch.equal(env.state_tensors()["mask"], target)
    env.close()


def test_morphology_exact():
    m = _cube()
    assert dilate(m).sum() == 8 ** 3 and erode(m).sum() == 4 ** 3
    speck = m.clone()
    speck[0, 0, 0, 11] = 1  # an isolated voxel: opening removes it
    assert torch.equal(Opening().target(torch.as_tensor(_obs(m, speck)), None), m)
    hole = m.clone()
    hole[0, 5, 5, 5] = 0  # a one-voxel hole: closing fills it, majority too
    x = torch.as_tensor(_obs(m, hole))
    assert torch.equal(Closing().target(x, None), m)
    assert MajorityFilter().target(x, None)[0, 5, 5, 5] == 1
    # a structure cut by the patch edge is not eroded from the edge
    edge = torch.zeros(1, 12, 12, 12)
    edge[:, :4] = 1
    assert torch.equal(Opening().target(torch.as_tensor(_obs(edge, edge)), None), edge)


def test_majority_equals_env_majority_action():
    env = SVLDRLVectorEnv(2, autoreset_mode=AutoresetMode.DISABLED, noise="flip", **ENV)
    obs, _ = env.reset(seed=5)
    target = MajorityFilter().target(torch.as_tensor(obs), None)
    env.step(np.full((2, 12, 12, 12), MAJ))
    assert torch.equal(env.state_tensors()["mask"], target)
    assert torch.equal(majority(env.state_tensors()["annotation"]), target)
    env.close()


def test_identity_random_shapes():
    obs = np.zeros((3, 6, 4, 5, 6), np.float32)
    assert (IdentityPolicy().act(obs) == KEEP).all() and IdentityPolicy().act(obs).shape == (3, 4, 5, 6)
    a = RandomPolicy(seed=1).act(obs)
    assert a.shape == (3, 4, 5, 6) and a.dtype == np.int64 and set(np.unique(a)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(a, RandomPolicy(seed=1).act(obs))
    assert 0.85 < (RandomPolicy(p_keep=0.9, seed=0).act(obs) == KEEP).mean() < 0.95
    with pytest.raises(ValueError):
        RandomPolicy(p_keep=2.0)


def test_intensity_refiner_fixes_dilated_annotation():
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(2, 16, 16, 16)
    truth[:, 4:12, 4:12, 4:12] = 1
    image = (0.3 + 0.4 * truth + 0.05 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    ann = dilate(truth, 1)  # the annotation is one voxel too big everywhere
    ann[1] = erode(truth[1:2], 1)[0]  # ... and one voxel too small in the second case
    pol = IntensityRefiner()
    a = pol.act(_obs(image, ann))
    refined = torch.as_tensor(ann.numpy().copy())
    refined[torch.as_tensor(a == SET_FG)] = 1
    refined[torch.as_tensor(a == SET_BG)] = 0

    def dice(p, t):
        return (2 * (p * t).flatten(1).sum(1) / (p + t).flatten(1).sum(1))

    before, after = dice(ann, truth), dice(refined, truth)
    assert (before < 0.85).all() and (after > 0.97).all()
    # per-case: the batch result equals each case on its own (no cross-case leakage)
    for i in range(2):
        np.testing.assert_array_equal(a[i:i + 1], pol.act(_obs(image[i:i + 1], ann[i:i + 1])))
    # nothing to fit in an empty annotation: keep everything
    empty = torch.zeros(1, 16, 16, 16)
    assert (pol.act(_obs(image[:1], empty)) == KEEP).all()


def test_oracle_and_identity_in_env():
    oracle = OraclePolicy()
    assert oracle.uses_truth and oracle.name == ORACLE_NAME == "oracle (upper bound)"
    with pytest.raises(ValueError, match="truth"):
        oracle.act(np.zeros((1, 6, 4, 4, 4), np.float32), {})
    recs, curve = run_episodes(oracle, ENV, 4, seed=0, batch_size=4, progress=False)
    assert all(r["dice"] == 1.0 for r in recs) and curve.shape == (4, 3)
    assert np.allclose(curve[:, 1:], 1.0)
    recs, curve = run_episodes(IdentityPolicy(), ENV, 4, seed=0, batch_size=4, progress=False)
    assert all(r["dice"] == pytest.approx(r["dice_annotation"]) for r in recs)
    assert np.allclose(curve, curve[:, :1])


def test_make_heuristic():
    assert isinstance(make_heuristic("closing", radius=2), Closing)
    with pytest.raises(ValueError, match="unknown heuristic"):
        make_heuristic("nope")
