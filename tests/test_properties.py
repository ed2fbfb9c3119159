"""Property-based tests (hypothesis) of the metrics and the environment on odd inputs."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svl_env import CaseSource, SVLDRLEnv
from svl_env import metrics as M

shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7))


@st.composite
def mask_pairs(draw):
    shape = draw(shapes)
    n = int(np.prod(shape))
    a = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(shape)
    b = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(shape)
    return torch.from_numpy(a)[None], torch.from_numpy(b)[None]


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_dice_iou_bounds_symmetry_identity(pair):
    a, b = pair
    for f in (M.dice, M.iou):
        v = float(f(a, b)[0])
        assert 0.0 <= v <= 1.0
        assert v == pytest.approx(float(f(b, a)[0]))
        assert float(f(a, a)[0]) == 1.0  # includes two empty masks
        if not torch.equal(a, b):
            assert v < 1.0
    d, j = float(M.dice(a, b)[0]), float(M.iou(a, b)[0])
    assert d == pytest.approx(2 * j / (1 + j))  # Dice and IoU are one monotone map apart


@settings(max_examples=40, deadline=None)
@given(mask_pairs())
def test_surface_distances_are_finite_or_documented_nan(pair):
    a, b = pair
    h, s = M.hd95(a, b)[0], M.asd(a, b)[0]
    if a.any() and b.any():
        assert np.isfinite(h) and np.isfinite(s) and h >= 0 and s >= 0
    elif not a.any() and not b.any():
        assert h == 0 and s == 0
    else:
        assert np.isnan(h) and np.isnan(s)


volume_kinds = st.sampled_from(["random", "empty", "full", "constant_image"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, kind=volume_kinds, noise=st.sampled_from(["none", "mt", "sp", "markov", "flip"]),
       seed=st.integers(0, 2**16), action_seed=st.integers(0, 2**16))
def test_episode_invariants(shape, kind, noise, seed, action_seed):
    """Observations stay in the space, nothing is NaN, and the rewards of an episode sum to
    the composite's total change (the telescoping of the DESIGN formula)."""
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    label = rng.random(shape) > 0.6
    if kind == "empty":
        label[:] = False
    elif kind == "full":
        label[:] = True
    elif kind == "constant_image":
        image[:] = 0.5
    w = {"w_dice": 1.0, "w_cont": 0.3, "w_cc": 0.1, "w_tv": 1.0}
    env = SVLDRLEnv(data=CaseSource.from_arrays([image], [label]), patch_size=shape, noise=noise,
                    reward_weights=w, max_steps=3)
    obs, info0 = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    arng = np.random.default_rng(action_seed)
    total = 0.0
    for _ in range(3):
        obs, r, term, trunc, info = env.step(arng.integers(0, 4, shape))
        assert env.observation_space.contains(obs) and np.isfinite(r)
        assert np.isfinite(info["reward_map"]).all()
        assert info["reward_map"].sum(dtype=np.float64) == pytest.approx(r, abs=1e-5)
        total += r
    assert trunc
    expected = (info["dice"] - info0["dice"]) - 0.3 * (info["continuity"] - info0["continuity"])
    assert total == pytest.approx(expected, abs=1e-9)
    for k in ("dice", "iou", "dice_clean", "iou_clean"):
        assert 0.0 <= info[k] <= 1.0
