"""Gymnasium's conventions where a new researcher trips (issue 18): one test per friction point.

1 episode length, 2 reward wrappers and the maps, 3 the action space's repr, 4 make_vec's
wrappers, 5 the truth contract, 6 file modes, 7 the quick benchmark's time, 8 noise strength at
16^3, 9 the registry listing; and the single env as a view over the core's public API.
"""

from __future__ import annotations

import ast
import os
import re
import stat
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import svl_env  # noqa: F401  (registers SVLDRL-v0)
from svl_env import SVLDRLEnv, SVLDRLVectorEnv
from svl_env.wrappers import NormalizeReward, ScaleReward, VectorNormalizeReward, VectorScaleReward

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
P = 8
TIME = 5  # index of the time channel


def _run_single(env, steps, action=3):
    """``steps`` steps from reset(seed=0); ``action`` an int for every voxel, or None: seeded random."""
    env.reset(seed=0)
    rs = np.random.default_rng(0)
    return [env.step(np.full((P, P, P), action) if action is not None else rs.integers(0, 4, (P, P, P)))
            for _ in range(steps)]


# ------------------------------------------------------------------- 1. one episode length
def test_default_spec_max_episode_steps_is_the_episode_length():
    env = gym.make("SVLDRL-v0", patch_size=P)
    assert env.spec.max_episode_steps == 5 == env.unwrapped.max_steps
    steps = _run_single(env, 5)
    assert [s[3] for s in steps] == [False] * 4 + [True]
    venv = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P)
    assert venv.spec.max_episode_steps == 5 == venv.max_steps


def test_make_max_episode_steps_sets_the_envs_own_length():
    env = gym.make("SVLDRL-v0", patch_size=P, max_episode_steps=3)
    assert env.spec.max_episode_steps == 3 and env.unwrapped.max_steps == 3
    steps = _run_single(env, 3)
    obs, _, _, truncated, info = steps[-1]
    assert truncated and info["t"] == 3
    assert obs[TIME].max() == pytest.approx(1.0)  # was 0.6: the env kept max_steps=5 under a TimeLimit of 3
    assert [s[0][TIME].max() for s in steps[:2]] == pytest.approx([1 / 3, 2 / 3])
    # no TimeLimit (-1): the env's own length
    assert gym.make("SVLDRL-v0", patch_size=P, max_episode_steps=-1).unwrapped.max_steps == 5
    # the SyncVectorEnv path goes through gym.make too
    sync = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P, vectorization_mode="sync", max_episode_steps=3)
    assert sync.envs[0].unwrapped.max_steps == 3 and sync.envs[0].spec.max_episode_steps == 3


def test_make_vec_length_agrees_with_spec_and_time_channel():
    for kw in ({"max_episode_steps": 3}, {"max_steps": 3}):
        venv = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P, **kw)
        assert venv.max_steps == 3 and venv.spec.max_episode_steps == 3, kw
        venv.reset(seed=0)
        for _ in range(2):
            venv.step(np.zeros((2, P, P, P), np.int64))
        obs, _, _, truncated, _ = venv.step(np.zeros((2, P, P, P), np.int64))
        assert truncated.all() and obs[:, TIME].max() == pytest.approx(1.0)
    # explicit max_steps wins over the alias, which make_vec fills from the registered spec
    assert SVLDRLVectorEnv(1, patch_size=P, max_steps=4, max_episode_steps=5).max_steps == 4
    assert SVLDRLVectorEnv(1, patch_size=P, max_episode_steps=2).max_steps == 2
    assert SVLDRLEnv(patch_size=P).max_steps == 5  # constructed directly, not by gym.make: the default


# ------------------------------------------------- 2. reward scaling keeps the maps consistent
def test_scale_reward_single_scales_reward_and_maps():
    base = SVLDRLEnv(patch_size=P, action_rewards=True)
    wrapped = ScaleReward(SVLDRLEnv(patch_size=P, action_rewards=True), 10.0)
    for (_, r0, _, _, i0), (_, r1, _, _, i1) in zip(_run_single(base, 3, None), _run_single(wrapped, 3, None)):
        assert r1 == pytest.approx(10.0 * r0) and r0 != 0.0
        np.testing.assert_allclose(i1["reward_map"], 10.0 * i0["reward_map"], rtol=1e-6)
        np.testing.assert_allclose(i1["action_rewards"], 10.0 * i0["action_rewards"], rtol=1e-6)
        assert i1["reward_map"].dtype == np.float32
        assert float(i1["reward_map"].sum(dtype=np.float64)) == pytest.approx(r1, rel=1e-5, abs=1e-7)
        assert i1["dice"] == i0["dice"]
    with pytest.raises(ValueError, match="positive"):
        ScaleReward(SVLDRLEnv(patch_size=P), 0.0)


def test_vector_scale_reward_scales_final_info_under_same_step():
    kw = dict(patch_size=P, max_steps=2, autoreset_mode=AutoresetMode.SAME_STEP)
    venv = VectorScaleReward(SVLDRLVectorEnv(2, **kw), 4.0)
    ref = SVLDRLVectorEnv(2, **kw)
    for e in (venv, ref):
        e.reset(seed=1)
    for _ in range(2):
        a = np.full((2, P, P, P), 1)
        _, r, _, truncated, info = venv.step(a)
        _, r0, _, _, info0 = ref.step(a)
        np.testing.assert_allclose(r, 4.0 * r0)
    assert truncated.all() and "final_info" in info
    final = info["final_info"]["reward_map"]
    np.testing.assert_allclose(final, 4.0 * info0["final_info"]["reward_map"], rtol=1e-6)
    np.testing.assert_allclose(final.reshape(2, -1).sum(1, dtype=np.float64), r, rtol=1e-5, atol=1e-7)


def test_normalize_reward_gives_gymnasiums_rewards_and_scales_the_maps_alike():
    ours = NormalizeReward(SVLDRLEnv(patch_size=P, action_rewards=True), gamma=0.9)
    theirs = gym.wrappers.NormalizeReward(SVLDRLEnv(patch_size=P, action_rewards=True), gamma=0.9)
    for (_, r, _, _, info), (_, r0, _, _, info0) in zip(_run_single(ours, 4, None), _run_single(theirs, 4, None)):
        assert r == r0 and r != 0.0
        assert float(info["reward_map"].sum(dtype=np.float64)) == pytest.approx(r, rel=1e-5, abs=1e-7)
        ratio = r / float(info0["reward_map"].sum(dtype=np.float64))
        np.testing.assert_allclose(info["action_rewards"], ratio * info0["action_rewards"], rtol=1e-4, atol=1e-9)
    kw = dict(patch_size=P, max_steps=2, autoreset_mode=AutoresetMode.SAME_STEP)
    venv, ref = VectorNormalizeReward(SVLDRLVectorEnv(2, **kw)), gym.wrappers.vector.NormalizeReward(
        SVLDRLVectorEnv(2, **kw))
    for e in (venv, ref):
        e.reset(seed=0)
    for a in (np.full((2, P, P, P), 1), np.full((2, P, P, P), 3)):
        _, r, _, _, info = venv.step(a)
        _, r0, _, _, _ = ref.step(a)
        np.testing.assert_array_equal(r, r0)
    np.testing.assert_allclose(info["final_info"]["reward_map"].reshape(2, -1).sum(1, dtype=np.float64), r,
                               rtol=1e-5, atol=1e-7)


def test_gymnasium_reward_wrappers_leave_the_map_as_documented():
    """README: NormalizeReward / ClipReward change the scalar only, so the map stops summing to it."""
    assert "`NormalizeReward`" in README and "pass through unscaled" in README
    for wrap in (gym.wrappers.vector.NormalizeReward, lambda v: gym.wrappers.vector.ClipReward(v, -1e-4, 1e-4)):
        venv = wrap(gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P))
        venv.reset(seed=0)
        _, r, _, _, info = venv.step(np.ones((2, P, P, P), np.int64))
        assert not np.allclose(info["reward_map"].reshape(2, -1).sum(1), r)


# ------------------------------------------------------- 3. short space reprs, num_actions
def test_action_space_repr_is_one_short_line_and_still_a_multidiscrete():
    env = gym.make("SVLDRL-v0")  # 32^3: MultiDiscrete's repr printed 48 lines of nvec
    space = env.action_space
    assert isinstance(space, gym.spaces.MultiDiscrete)
    assert str(space) == repr(space) == "VoxelActions(4 per voxel, shape=(32, 32, 32))"
    assert env.unwrapped.num_actions == 4 == space.num_actions
    venv = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P)
    assert repr(venv.action_space) == "Box(0, 3, (2, 8, 8, 8), int64)"  # batch_space's integer Box, documented
    assert venv.num_actions == 4 and venv.action_space.contains(venv.action_space.sample())
    assert space == gym.spaces.MultiDiscrete(np.full((32, 32, 32), 4))
    check_env(SVLDRLEnv(patch_size=P), skip_render_check=True)
    assert "batch_space" in README and "VoxelActions(4 per voxel" in README


# -------------------------------------------------------------- 4. make_vec(wrappers=...)
def test_make_vec_wrappers_limit_and_the_vector_wrappers_that_work():
    with pytest.raises(gym.error.Error, match="wrappers argument"):
        gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P, wrappers=[gym.wrappers.NormalizeReward])
    sync = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P, vectorization_mode="sync",
                        wrappers=[gym.wrappers.NormalizeReward])
    sync.reset(seed=0)
    V = gym.wrappers.vector
    three = gym.spaces.Box(0, 1, (3, P, P, P), np.float32)
    listed = {"RecordEpisodeStatistics": V.RecordEpisodeStatistics, "NormalizeObservation": V.NormalizeObservation,
              "TransformObservation": lambda v: V.TransformObservation(v, lambda o: o[:, :3], batch_space(three, 2),
                                                                       single_observation_space=three),
              "DtypeObservation": lambda v: V.DtypeObservation(v, np.float16),
              "RescaleObservation": lambda v: V.RescaleObservation(v, -1.0, 1.0),
              "FlattenObservation": V.FlattenObservation, "NormalizeReward": V.NormalizeReward,
              "ClipReward": lambda v: V.ClipReward(v, -1.0, 1.0),
              "TransformReward": lambda v: V.TransformReward(v, lambda r: 2 * r), "DictInfoToList": V.DictInfoToList}
    for name, wrap in listed.items():
        assert f"`{name}`" in README, name
        venv = wrap(gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P))
        venv.reset(seed=0)
        for _ in range(6):  # across an autoreset
            venv.step(venv.action_space.sample())
    stats = V.RecordEpisodeStatistics(gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P))
    stats.reset(seed=0)
    for _ in range(5):
        *_, info = stats.step(np.zeros((2, P, P, P), np.int64))
    assert info["episode"]["l"].tolist() == [5, 5]


def test_next_step_and_disabled_autoreset_as_documented():
    venv = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P, max_episode_steps=2, action_rewards=True)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    venv.reset(seed=0)
    for _ in range(2):
        *_, truncated, _ = venv.step(np.full((2, P, P, P), 3))
    assert truncated.all()
    obs, r, _, truncated, info = venv.step(np.full((2, P, P, P), 1))  # ignored: the new episodes start
    assert (r == 0).all() and not truncated.any() and (info["t"] == 0).all() and obs[:, TIME].max() == 0.0
    assert not info["reward_map"].any() and not info["action_rewards"].any()
    off = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P, max_episode_steps=1,
                       autoreset_mode=AutoresetMode.DISABLED)
    off.reset(seed=0)
    *_, done, _ = off.step(np.zeros((2, P, P, P), np.int64))
    _, info = off.reset(options={"reset_mask": done})
    assert done.all() and (info["t"] == 0).all()


def test_same_step_final_info_and_reward_map_as_documented():
    venv = gym.make_vec("SVLDRL-v0", num_envs=2, patch_size=P, max_episode_steps=2,
                        autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=0)
    venv.step(np.full((2, P, P, P), 3))
    obs, r, _, truncated, info = venv.step(np.full((2, P, P, P), 1))
    assert truncated.all() and info["_final_info"].all() and not info["_reward_map"].any()
    assert (info["t"] == 0).all() and (info["final_info"]["t"] == 2).all()
    assert obs[:, TIME].max() == 0.0 and all(o[TIME].max() == pytest.approx(1.0) for o in info["final_obs"])
    np.testing.assert_allclose(info["final_info"]["reward_map"].reshape(2, -1).sum(1, dtype=np.float64), r,
                               rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ 5. the truth contract
def test_truth_contract_uses_truth():
    import agents.common.policy as policy_mod
    from agents.common.policy import Policy
    from agents.eval.episodes import run_episodes

    doc = policy_mod.__doc__
    assert "uses_truth = True" in doc and "never holds the truth" in doc and "oracles read" not in doc
    _, info = gym.make("SVLDRL-v0", patch_size=P).reset(seed=0)
    assert "truth" not in info

    class Probe(Policy):
        def __init__(self, uses_truth):
            self.uses_truth, self.name, self.seen = uses_truth, f"probe {uses_truth}", []

        def act(self, obs, info=None, deterministic=True):
            self.seen.append(None if "truth" not in info else info["truth"])
            return np.zeros((obs.shape[0], *obs.shape[2:]), np.int64)

    blind, oracle = Probe(False), Probe(True)
    for p in (blind, oracle):
        run_episodes(p, dict(patch_size=P, max_steps=2), episodes=2, seed=0, progress=False)
    assert blind.seen == [None, None]
    truth = oracle.seen[0]
    assert truth.shape == (2, P, P, P) and truth.dtype == np.float32 and set(np.unique(truth)) <= {0.0, 1.0}
    assert "`uses_truth = True`" in README


# --------------------------------------------------------------------------- 6. file modes
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_follow_the_umask(tmp_path, umask_022):
    from agents.common.checkpoint import atomic_write
    from agents.eval import benchmark as B
    from svl_env.files import new_file_mode

    assert new_file_mode() == 0o644
    p = atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # mkstemp's 0600 used to survive the rename
    res = B.run(agents="identity", env_kwargs=dict(patch_size=P, max_steps=2), episodes=2, seed=0,
                out=tmp_path / "bench", batch_size=2, overlays=1, progress=False)
    files = [f for f in Path(res["out"]).rglob("*") if f.is_file()]
    assert len(files) >= 5
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o644" for f in files}
    os.umask(0o077)
    p = atomic_write(tmp_path / "b.txt", lambda tmp: Path(tmp).write_text("x"))
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_nifti_labels_follow_the_umask(tmp_path, umask_022):
    # refine, segment and pipeline write their labels through save_nifti_atomic
    import nibabel as nib

    from svl_env.data.nifti import save_nifti_atomic

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    p = save_nifti_atomic(img, tmp_path / "lab.nii.gz")
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    os.umask(0o077)
    assert stat.S_IMODE(save_nifti_atomic(img, tmp_path / "lab2.nii").stat().st_mode) == 0o600


# ------------------------------------------------------------- 7. one quick-benchmark time
def test_quick_run_time_is_one_measured_number():
    import argparse

    from agents.cli.benchmark import add_arguments
    from agents.eval.benchmark import QUICK_RUN_TIME

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    quick = next(a for a in parser._actions if "--quick" in a.option_strings)
    assert QUICK_RUN_TIME in quick.help and QUICK_RUN_TIME in README
    assert "15 min" not in quick.help
    assert re.search(r"whole run took 12 min \d+ s", README)  # what QUICK_RUN_TIME rounds


# ------------------------------------------------------------- 8. noise strength at 16^3
def test_noise_table_at_16_matches_the_measurement():
    import importlib.util

    spec = importlib.util.spec_from_file_location("noise_strength", ROOT / "benchmarks" / "noise_strength.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = mod.annotation_dice("mt", 16, 32, 0)
    row = next(line for line in README.splitlines() if line.startswith("| `mt` | ") and line.count("|") == 6)
    assert row.split("|")[2].strip() == f"{d.mean():.2f} ± {d.std(ddof=1):.2f}"
    assert d.mean() < 0.5  # far harsher than the 32^3 figure the table above documents


# -------------------------------------------------------------------------- 9. the registry
def test_registry_lists_the_env_under_the_package_name():
    text = gym.pprint_registry(disable_print=True)
    block = re.search(r"===== svl_env =====\n([^=]*)", text)
    assert block and "SVLDRL-v0" in block.group(1)
    assert not re.search(r"===== env =====\n[^=]*SVLDRL", text)
    assert gym.make("SVLDRL-v0", patch_size=P).spec.id == "SVLDRL-v0"  # the id is unchanged


# ---------------------------------------------- the single env over the core's public API
def test_single_env_uses_only_public_core_members():
    tree = ast.parse((ROOT / "svl_env" / "env.py").read_text())
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and isinstance(n.value, ast.Attribute) and n.value.attr == "_vec"]
    assert private == []
    venv = SVLDRLVectorEnv(2, patch_size=P)
    assert venv.needs_reset
    with pytest.raises(ValueError, match="2 generators"):
        venv.reset_from([np.random.default_rng(0)])
    a, _ = venv.reset_from([np.random.default_rng(0), np.random.default_rng(1)])
    b, _ = SVLDRLVectorEnv(2, patch_size=P).reset_from([np.random.default_rng(0), np.random.default_rng(1)])
    assert not venv.needs_reset and np.array_equal(a, b)
    single = SVLDRLEnv(patch_size=P)
    single.reset(seed=7)
    vec = SVLDRLVectorEnv(1, patch_size=P)
    np.testing.assert_array_equal(single.reset(seed=7)[0], vec.reset(seed=7)[0][0])
