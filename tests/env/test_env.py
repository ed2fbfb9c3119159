"""The SVLDRL-v0 environment: API conformance, vector/single equivalence, reward, errors."""

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import svl_env
from svl_env import SVLDRLEnv, SVLDRLVectorEnv

P = 16  # patch size used by most tests: fast on 2 cores


def test_check_env_passes_without_warnings():
    env = gym.make("SVLDRL-v0", patch_size=P)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_make_with_module_prefix_in_fresh_interpreter():
    code = ("import gymnasium as gym; env = gym.make('svl_env:SVLDRL-v0', patch_size=8); "
            "obs, _ = env.reset(seed=0); print(type(env.unwrapped).__name__, obs.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SVLDRLEnv (6, 8, 8, 8)" in out.stdout


def test_make_vec_returns_native_class():
    venv = gym.make_vec("SVLDRL-v0", num_envs=16, patch_size=8)
    assert isinstance(venv, SVLDRLVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.observation_space.shape == (16, 6, 8, 8, 8)
    assert venv.action_space.shape == (16, 8, 8, 8)


def test_spaces_and_names():
    env = SVLDRLEnv(patch_size=(8, 12, 10))
    assert env.observation_space.shape == (len(env.channel_names), 8, 12, 10)
    assert {"image", "mask", "annotation"} <= set(env.channel_names)
    assert env.action_space.nvec.shape == (8, 12, 10)
    assert (env.action_space.nvec == len(env.action_names)).all()
    obs, _ = env.reset(seed=1)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)


def test_vector_episodes_equal_single_envs():
    """16 native envs == 16 single envs seeded s+i, over two episodes (with autoreset)."""
    n, seed, steps = 16, 123, 7  # 7 steps with max_steps=5 crosses one NEXT_STEP autoreset
    venv = SVLDRLVectorEnv(n, patch_size=P)
    singles = [SVLDRLEnv(patch_size=P) for _ in range(n)]
    vobs, vinfo = venv.reset(seed=seed)
    sobs = [e.reset(seed=seed + i)[0] for i, e in enumerate(singles)]
    np.testing.assert_array_equal(vobs, np.stack(sobs))
    act_rng = np.random.default_rng(0)
    pending_reset = np.zeros(n, bool)
    for _ in range(steps):
        actions = act_rng.integers(0, 4, size=(n, P, P, P))
        vobs, vrew, vterm, vtrunc, vinfo = venv.step(actions)
        for i, e in enumerate(singles):
            if pending_reset[i]:  # NEXT_STEP: this step resets env i, ignoring its action
                o, _ = e.reset()
                r, term, trunc, info = 0.0, False, False, None
            else:
                o, r, term, trunc, info = e.step(actions[i])
            np.testing.assert_array_equal(vobs[i], o)
            assert vrew[i] == pytest.approx(r, abs=1e-12)
            assert (vterm[i], vtrunc[i]) == (term, trunc)
            if info is not None:
                assert vinfo["dice_clean"][i] == pytest.approx(info["dice_clean"], abs=1e-12)
                np.testing.assert_allclose(vinfo["reward_map"][i], info["reward_map"], atol=1e-7)
        pending_reset = vterm | vtrunc


def test_same_seed_same_episode_different_seed_differs():
    a, b = SVLDRLEnv(patch_size=P), SVLDRLEnv(patch_size=P)
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    np.testing.assert_array_equal(oa, ob)
    oc, _ = b.reset(seed=8)
    assert not np.array_equal(oa, oc)


def _truth_actions(env):
    truth = env.state_tensors()["truth"][0].numpy()
    return np.where(truth > 0.5, 1, 2)  # set_foreground / set_background


def test_keep_everything_gives_zero_reward():
    env = SVLDRLEnv(patch_size=P)
    env.reset(seed=3)
    _, r, _, _, info = env.step(np.zeros((P, P, P), np.int64))
    assert r == 0.0
    assert not info["reward_map"].any()


def test_setting_truth_gives_exact_dice_gain():
    env = SVLDRLEnv(patch_size=P, reward_weights={"w_cont": 0.0})
    _, info0 = env.reset(seed=4)
    assert info0["dice_clean"] < 1.0
    _, r, _, _, info = env.step(_truth_actions(env))
    assert info["dice_clean"] == 1.0
    assert r == pytest.approx(1.0 - info0["dice_clean"], abs=1e-12)


def test_reward_is_dice_gain_minus_weighted_continuity_change():
    w = {"w_dice": 1.5, "w_cont": 0.3, "w_cc": 0.2, "w_tv": 0.7}
    env = SVLDRLEnv(patch_size=P, reward_weights=w)
    _, info0 = env.reset(seed=5)
    _, r, _, _, info = env.step(_truth_actions(env))
    expected = 1.5 * (info["dice"] - info0["dice"]) - 0.3 * (info["continuity"] - info0["continuity"])
    assert r == pytest.approx(expected, abs=1e-12)


def test_continuity_term_punishes_fragmentation():
    env = SVLDRLEnv(patch_size=P, reward_weights={"w_dice": 0.0}, noise="none")
    _, info0 = env.reset(seed=6)
    mask = env.state_tensors()["mask"][0].numpy()
    actions = np.zeros((P, P, P), np.int64)
    # isolated specks far from the object: each a new component with 6 new faces
    specks = [(z, y, x) for z in (1, P - 2) for y in (1, P - 2) for x in (1, P - 2)]
    for z, y, x in specks:
        if mask[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2].sum() == 0:
            actions[z, y, x] = 1
    assert actions.sum() >= 2
    _, r, _, _, info = env.step(actions)
    assert info["n_components"] > info0["n_components"]
    assert info["continuity"] > info0["continuity"]
    assert r < 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_map_sums_to_reward(seed):
    env = SVLDRLEnv(patch_size=P)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        _, r, _, _, info = env.step(rng.integers(0, 4, (P, P, P)))
        assert info["reward_map"].dtype == np.float32
        assert info["reward_map"].sum(dtype=np.float64) == pytest.approx(r, abs=1e-6)


def test_reward_map_is_zero_where_nothing_changed():
    env = SVLDRLEnv(patch_size=P)
    obs, _ = env.reset(seed=9)
    actions = np.random.default_rng(9).integers(0, 4, (P, P, P))
    new_obs, _, _, _, info = env.step(actions)
    unchanged = obs[1] == new_obs[1]
    assert not info["reward_map"][unchanged].any()


def test_action_rewards_equal_single_voxel_counterfactuals():
    """action_rewards[a, v] == the reward of the step where voxel v alone takes action a
    (component term switched off, as documented)."""
    kw = dict(patch_size=8, reward_weights={"w_cc": 0.0}, action_rewards=True)
    env = SVLDRLEnv(**kw)
    env.reset(seed=11)
    _, _, _, _, info = env.step(np.zeros((8, 8, 8), np.int64))
    cf = info["action_rewards"]
    assert cf.shape == (4, 8, 8, 8)
    probe = SVLDRLEnv(**kw)
    rng = np.random.default_rng(0)
    for _ in range(12):
        v = tuple(rng.integers(0, 8, 3))
        a = int(rng.integers(0, 4))
        probe.reset(seed=11)
        actions = np.zeros((8, 8, 8), np.int64)
        actions[v] = a
        _, r, _, _, _ = probe.step(actions)
        assert cf[(a, *v)] == pytest.approx(r, abs=1e-6)


def test_autoreset_same_step_reports_final_obs():
    venv = SVLDRLVectorEnv(3, patch_size=8, max_steps=2, autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=0)
    keep = np.zeros((3, 8, 8, 8), np.int64)
    _, _, _, trunc, info = venv.step(keep)
    assert not trunc.any() and "final_obs" not in info
    obs, _, _, trunc, info = venv.step(keep)
    assert trunc.all()
    assert info["_final_obs"].all() and info["final_obs"][0].shape == (6, 8, 8, 8)
    assert "dice" in info["final_info"]
    assert (obs[:, -1] == 0).all()  # the returned observation is the new episode's (time 0)


def test_autoreset_disabled_uses_reset_mask():
    venv = SVLDRLVectorEnv(2, patch_size=8, max_steps=1, autoreset_mode=AutoresetMode.DISABLED)
    obs0, _ = venv.reset(seed=0)
    venv.step(np.zeros((2, 8, 8, 8), np.int64))
    obs, _ = venv.reset(options={"reset_mask": np.array([True, False])})
    assert (obs[0, -1] == 0).all() and (obs[1, -1] == 1).all()


def test_fresh_arrays_every_call():
    venv = SVLDRLVectorEnv(2, patch_size=8)
    obs, _ = venv.reset(seed=0)
    before = obs.copy()
    obs2, *_ = venv.step(np.zeros((2, 8, 8, 8), np.int64))
    obs2[:] = -1
    obs3, *_ = venv.step(np.zeros((2, 8, 8, 8), np.int64))
    assert (obs3 >= 0).all()
    np.testing.assert_array_equal(obs, before)


def test_render_rgb_array():
    env = SVLDRLEnv(patch_size=P, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 0


class _Threshold(torch.nn.Module):
    """A trivial segmenter: logits = image - 0.5."""

    def forward(self, x):
        return x - 0.5


def test_intensity_action_set_edits_image_and_resegments():
    env = SVLDRLEnv(patch_size=P, action_set="intensity", segmenter=_Threshold())
    assert env.action_names == ("keep", "enhance", "weaken")
    obs, _ = env.reset(seed=2)
    np.testing.assert_array_equal(obs[1], (obs[0] > 0.5).astype(np.float32))
    weaken = np.full((P, P, P), 2)
    obs2, r, _, _, info = env.step(weaken)
    assert (obs2[0] <= obs[0] + 1e-7).all() and (obs2[0] < obs[0]).any()
    np.testing.assert_array_equal(obs2[1], (obs2[0] > 0.5).astype(np.float32))
    assert info["reward_map"].sum(dtype=np.float64) == pytest.approx(r, abs=1e-6)
    # same seed, same epsilon
    env.reset(seed=2)
    obs3, *_ = env.step(weaken)
    np.testing.assert_array_equal(obs2, obs3)


# --- bad input ---------------------------------------------------------------

@pytest.fixture
def env8():
    env = SVLDRLEnv(patch_size=8)
    env.reset(seed=0)
    return env


@pytest.mark.parametrize("action, match", [
    (np.zeros((8, 8), np.int64), "shape"),
    (np.zeros((8, 8, 9), np.int64), "shape"),
    (np.zeros((8, 8, 8), np.float32), "integers"),
    (np.full((8, 8, 8), 4), r"\[0, 3\]"),
    (np.full((8, 8, 8), -1), r"\[0, 3\]"),
    ("keep", "shape"),
])
def test_bad_actions_raise_value_error(env8, action, match):
    with pytest.raises(ValueError, match=match):
        env8.step(action)


def test_step_before_reset():
    env = SVLDRLEnv(patch_size=8)
    with pytest.raises(ValueError, match="before reset"):
        env.step(np.zeros((8, 8, 8), np.int64))
    with pytest.raises(gym.error.ResetNeeded):
        SVLDRLVectorEnv(2, patch_size=8).step(np.zeros((2, 8, 8, 8), np.int64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(action_set="pixels"), "action_set"),
    (dict(action_set="intensity"), "segmenter"),
    (dict(reward_target="truth"), "reward_target"),
    (dict(patch_size=(8, 8)), "patch_size"),
    (dict(noise_ratio=1.5), "noise_ratio"),
    (dict(max_steps=0), "max_steps"),
    (dict(reward_weights={"w_dise": 1.0}), "w_dise"),
    (dict(data="/nonexistent/folder"), "not found"),
    (dict(render_mode="human"), "render_mode"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        SVLDRLEnv(**{"patch_size": 8, **kwargs})


def test_registration_is_idempotent():
    import importlib

    import envs_registry

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs_registry)
    assert "SVLDRL-v0" in gym.registry
    assert svl_env.__version__


def test_component_count_is_the_same_whether_the_batch_is_split_or_not():
    """n_components labels large batches in concurrent chunks; each row's count must equal
    scipy's count for that row alone (26-connectivity), whatever the thread count."""
    import scipy.ndimage as ndi

    from svl_env import metrics as M

    g = torch.Generator().manual_seed(3)
    m = (torch.rand(7, 40, 40, 40, generator=g) > 0.7).float()
    m[2] = 0  # an empty row between non-empty ones
    ref = [ndi.label(r.numpy() > 0, structure=np.ones((3, 3, 3), bool))[1] for r in m]
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert M.n_components(m).tolist() == ref
    finally:
        torch.set_num_threads(threads)


def test_component_count_keeps_rows_apart_at_their_borders():
    # the rows are labelled side by side along W (metrics._count_rows): a component on one
    # row's last W column and one on the next row's first column must stay two
    from svl_env import metrics as M

    m = torch.zeros(3, 4, 4, 5)
    m[0, 1, 1, 4] = 1  # last W column of row 0
    m[1, 1, 1, 0] = 1  # first W column of row 1, same (D, H)
    m[1, 2, 2, 4] = 1  # and row 1's last column, diagonal to row 2's first
    m[2, 1, 1, 0] = m[2, 3, 3, 0] = 1
    assert M.n_components(m).tolist() == [1, 2, 2]


def test_reset_mask_seeds_only_the_rows_being_reset():
    """A seed given for a row outside ``reset_mask`` is ignored, as SyncVectorEnv ignores it: that
    row's next episode continues its own generator."""
    from svl_env import SVLDRLVectorEnv

    def second_episode_of_row_1(seeds):
        env = SVLDRLVectorEnv(2, patch_size=8)
        env.reset(seed=[1, 2])
        env.reset(seed=seeds, options={"reset_mask": np.array([True, False])})
        obs, _ = env.reset(options={"reset_mask": np.array([False, True])})
        return np.asarray(obs)[1]

    np.testing.assert_array_equal(second_episode_of_row_1([5, 6]), second_episode_of_row_1([5, None]))
