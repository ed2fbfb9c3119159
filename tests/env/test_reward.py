"""The fast step kernels against their definitions: bit for bit, not approximately.

The step computes the reward map by a per-row lookup, the masks' neighbourhood counts, face
sums and object counts in byte arithmetic, and skips the transitions an autoreset discards.
Each test here compares one of those with the plain float32 definition it replaces.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svl_env import SVLDRLEnv, SVLDRLVectorEnv
from svl_env import dynamics as D
from svl_env import metrics as M
from svl_env.reward import RewardWeights, _reference_reward_map, objective, step_reward


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)  # float32 bit patterns: tells -0.0 from 0.0


def _masks(seed: int, shape, p: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).float()


@pytest.mark.parametrize("shape", [(5, 8, 8, 8), (3, 9, 4, 7), (4, 2, 3, 2)])
@pytest.mark.parametrize("weights", [None, {"w_dice": 0.7, "w_cont": 0.3, "w_cc": 0.11, "w_tv": 2.5}])
def test_reward_map_lookup_is_the_formula_bit_for_bit(shape, weights):
    w = RewardWeights.from_any(weights)
    target, prev, new = _masks(1, shape, 0.3), _masks(2, shape), _masks(3, shape)
    target[0] = prev[0] = new[0] = 0  # an empty target and mask: the ΔDice-spread-evenly rows
    target[1] = prev[1] = 0  # S_{t-1} = 0 only
    new[2] = prev[2]  # nothing changes
    prev_obj = objective(prev, target)
    reward, reward_map, new_obj = step_reward(prev, new.to(torch.uint8), target.to(torch.uint8), prev_obj, w)
    ref = _reference_reward_map(prev, new, target, prev_obj, new_obj, w)
    assert torch.equal(_bits(reward_map), _bits(ref))
    # and the scalar reward is the objective difference, recomputed from scratch
    again = objective(new, target)
    assert torch.equal(new_obj.tp, again.tp) and torch.equal(new_obj.tv, again.tv)
    assert torch.equal(new_obj.n_cc, again.n_cc) and torch.equal(new_obj.vtv, again.vtv)
    assert torch.allclose(reward_map.double().sum((1, 2, 3)), reward, atol=1e-5)


def _padded_box_sum(x: torch.Tensor) -> torch.Tensor:
    for dim in (1, 2, 3):
        pad = [0] * 6
        pad[2 * (3 - dim)] = pad[2 * (3 - dim) + 1] = 1
        p = F.pad(x, pad)
        n = x.shape[dim]
        x = p.narrow(dim, 0, n) + p.narrow(dim, 1, n) + p.narrow(dim, 2, n)
    return x


@pytest.mark.parametrize("shape", [(3, 8, 9, 10), (2, 2, 2, 2), (2, 5, 2, 3)])
def test_neighbourhood_sums_and_majority_match_the_float_definitions(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    x[x.abs() < 0.3] = -0.0  # signed zeros must come out as the padded sum's
    assert torch.equal(_bits(D._box_sum(x)), _bits(_padded_box_sum(x)))
    m = _masks(4, shape, 0.5)
    mean = _padded_box_sum(m) * (1.0 / _padded_box_sum(torch.ones(1, *shape[1:])))
    assert torch.equal(_bits(D.neighbourhood_mean(m.bool())), _bits(mean))
    assert torch.equal(_bits(D.neighbourhood_mean(m)), _bits(mean))
    assert torch.equal(D.majority_from_box(D.box_sum(m)).bool(), mean > 0.5)


def test_label_step_is_the_action_table():
    m = torch.tensor([0, 1] * 8, dtype=torch.uint8).view(1, 2, 2, 4)
    j = torch.tensor([0, 0, 1, 1] * 4, dtype=torch.uint8).view(1, 2, 2, 4)
    a = torch.tensor([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4, dtype=torch.uint8).view(1, 2, 2, 4)
    expected = torch.where(a == 0, m, torch.where(a == 1, 1, torch.where(a == 2, 0, j))).to(torch.uint8)
    assert torch.equal(D.label_step(m, a, j), expected)
    mean3 = torch.where(j.bool(), 0.75, 0.25)
    assert torch.equal(D.apply_label_actions(m.float(), a.long(), mean3), expected.float())


def test_byte_counts_equal_float_counts():
    p, t = _masks(5, (4, 7, 6, 5)), _masks(6, (4, 7, 6, 5))
    for got, ref in zip(M.overlap_counts(p.bool(), t.to(torch.uint8)), M.overlap_counts(p, t)):
        assert torch.equal(got, ref)
    vtv = torch.randint(0, 7, (3, 5, 6, 7), dtype=torch.int8)
    assert torch.equal(M.row_sums(vtv), vtv.double().sum((1, 2, 3)))


def test_staggered_autoresets_equal_sync_vector_env():
    """NEXT_STEP autoresets of some rows only (episodes out of phase after a partial reset):
    the native env steps only the other rows; everything equals SyncVectorEnv's."""
    n, size = 4, 8
    native = SVLDRLVectorEnv(n, patch_size=size, max_steps=3, action_rewards=True)
    sync = gym.vector.SyncVectorEnv([lambda: SVLDRLEnv(patch_size=size, max_steps=3, action_rewards=True)] * n)
    np.testing.assert_array_equal(native.reset(seed=5)[0], sync.reset(seed=5)[0])
    rng = np.random.default_rng(1)
    for t in range(9):
        if t == 1:
            mask = np.arange(n) % 2 == 0
            seeds = [100 + i if mask[i] else None for i in range(n)]
            o_n, _ = native.reset(seed=seeds, options={"reset_mask": mask})
            o_s, _ = sync.reset(seed=seeds, options={"reset_mask": mask})
            np.testing.assert_array_equal(o_n, o_s)
        a = rng.integers(0, 4, size=(n, size, size, size))
        out_n, out_s = native.step(a), sync.step(a)
        for x, y in zip(out_n[:4], out_s[:4]):
            np.testing.assert_array_equal(x, y)
        for k in ("reward_map", "action_rewards", "dice", "n_components"):
            np.testing.assert_array_equal(out_n[4][k], out_s[4][k])


def test_observation_memory_is_reused_only_when_nothing_holds_it():
    env = SVLDRLVectorEnv(2, patch_size=8, max_steps=100)
    env.reset(seed=0)
    keep = np.zeros((2, 8, 8, 8), np.int64)

    def address(x):
        return x.__array_interface__["data"][0]

    # the array itself, a view of it, a tensor sharing it: each keeps its memory out of reuse
    for hold in (lambda o: o, lambda o: o[1], torch.from_numpy):
        obs = env.step(keep)[0]
        old, before = address(obs), obs.copy()
        holder = hold(obs)
        del obs
        for _ in range(2):
            assert address(env.step(keep)[0]) != old
        np.testing.assert_array_equal(np.asarray(holder), before[1] if np.asarray(holder).ndim == 4 else before)
        del holder
    obs = env.step(keep)[0]
    old = address(obs)
    del obs
    assert address(env.step(keep)[0]) == old  # let go of: reused
