"""Property-based tests (hypothesis) of the metrics and the environment on odd inputs."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gymnasium.vector import AutoresetMode

from svl_env import CaseSource, SVLDRLEnv, SVLDRLVectorEnv
from svl_env import metrics as M

shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7))


@st.composite
def mask_pairs(draw):
    """Two masks of one odd shape; each random, empty, full, or a copy of the other."""
    shape = draw(shapes)
    n = int(np.prod(shape))

    def one():
        kind = draw(st.sampled_from(["random", "random", "empty", "full"]))
        if kind == "empty":
            return np.zeros(shape, bool)
        if kind == "full":
            return np.ones(shape, bool)
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(shape)

    a = one()
    b = a.copy() if draw(st.booleans()) and draw(st.booleans()) else one()
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
    assert j <= d + 1e-12
    # batched rows are independent, and {0,1} float masks score like bool masks
    ab = M.dice(torch.cat([a, a, b]), torch.cat([b, a, a]).float())
    assert ab.tolist() == pytest.approx([d, 1.0, d])
    assert np.isfinite(M.continuity(a).numpy()).all() and float(M.continuity(a)[0]) >= 0


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


# --------------------------------------------------------------------- vector env configurations
class _Threshold(torch.nn.Module):
    """A deterministic stand-in segmenter: logits = 3x3x3 mean of the image (zero padded) - 0.3."""

    def forward(self, x):
        return torch.nn.functional.conv3d(x, torch.full((1, 1, 3, 3, 3), 1 / 27), padding=1) - 0.3


@st.composite
def env_configs(draw):
    shape = draw(st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(2, 6)))
    cfg = dict(num_envs=draw(st.integers(1, 3)), patch_size=shape, max_steps=draw(st.integers(1, 3)),
               reward_weights={k: draw(st.sampled_from([0.0, 0.05, 1.0, 3.0])) for k in ("w_dice", "w_cont",
                                                                                        "w_cc", "w_tv")},
               autoreset_mode=draw(st.sampled_from(list(AutoresetMode))),
               return_tensors=draw(st.booleans()))
    data = draw(st.sampled_from(["phantom", "arrays"]))
    if data == "arrays":  # odd volumes, possibly smaller than the patch (padded), masks empty/full/random
        vshape = draw(st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
        kind = draw(volume_kinds)
        image = rng.random(vshape).astype(np.float32)
        label = rng.random(vshape) > 0.5
        if kind == "empty":
            label[:] = False
        elif kind == "full":
            label[:] = True
        elif kind == "constant_image":
            image[:] = draw(st.sampled_from([0.0, 0.5, 1.0]))
        cfg["data"] = CaseSource.from_arrays([image], [label])
    else:  # phantoms need >= 8 voxels per axis (refused at construction, tested in test_malformed)
        cfg["patch_size"] = tuple(draw(st.integers(8, 11)) for _ in range(3))
        cfg["families"] = [draw(st.sampled_from(["blob", "tubular", "multi", "hollow"]))]
    cfg["noise"] = draw(st.sampled_from(["none", "mt", "flip", "sp", "markov", "mt+flip"]))
    action_set = draw(st.sampled_from(["label", "label", "intensity"]))
    if action_set == "intensity":
        cfg.update(action_set="intensity", segmenter=_Threshold())
    else:
        cfg["action_rewards"] = draw(st.booleans())
        if draw(st.booleans()):
            cfg.update(reward_target="annotation")
    return cfg


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=env_configs(), seed=st.integers(0, 2 ** 16), action_seed=st.integers(0, 2 ** 16))
def test_vector_env_invariants_over_configurations(cfg, seed, action_seed):
    """For any configuration: observations in the space, no NaN anywhere, reward maps sum to the
    rewards, the counterfactual reward of 'keep' is 0, metrics in [0, 1], and each env's rewards
    over an episode telescope to the composite's total change."""
    env = SVLDRLVectorEnv(**cfg)
    w = env.weights
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(_np(obs).astype(np.float32))
    start = {k: _np(info[k]).astype(np.float64) for k in ("dice", "continuity")}
    total = np.zeros(env.num_envs)
    arng = np.random.default_rng(action_seed)
    for t in range(env.max_steps):
        a = arng.integers(0, len(env.action_names), (env.num_envs, *env.patch_shape))
        obs, r, term, trunc, info = env.step(torch.as_tensor(a) if cfg["return_tensors"] else a)
        o, r = _np(obs), _np(r)
        assert o.dtype == np.float32 and env.observation_space.contains(o)
        assert np.isfinite(r).all() and not term.any()
        for k, v in info.items():
            if k == "final_obs":
                for fo in v[info["_final_obs"]]:
                    assert env.single_observation_space.contains(_np(fo))
            elif k == "final_info":
                assert all(np.isfinite(_np(x).astype(np.float64)).all() for kk, x in v.items() if kk[0] != "_")
            elif not k.startswith("_"):
                assert np.isfinite(_np(v).astype(np.float64)).all(), k
        rm = _np(info["reward_map"]).astype(np.float64).reshape(env.num_envs, -1).sum(1)
        assert rm == pytest.approx(r, abs=1e-5)
        if "action_rewards" in info:
            assert np.all(_np(info["action_rewards"])[:, 0] == 0)  # keep changes nothing, earns nothing
        for k in ("dice", "iou", "dice_clean", "iou_clean"):
            if k in info:
                assert ((_np(info[k]) >= 0) & (_np(info[k]) <= 1)).all(), k
        total += r
    assert trunc.all()
    if env.autoreset_mode != AutoresetMode.SAME_STEP:  # SAME_STEP reports the next episode's start
        expected = w.w_dice * (_np(info["dice"]) - start["dice"]) - w.w_cont * (_np(info["continuity"])
                                                                               - start["continuity"])
        np.testing.assert_allclose(total, expected, atol=1e-9)
    else:
        fin = info["final_info"]
        expected = w.w_dice * (_np(fin["dice"]) - start["dice"]) - w.w_cont * (_np(fin["continuity"])
                                                                              - start["continuity"])
        np.testing.assert_allclose(total, expected, atol=1e-9)
