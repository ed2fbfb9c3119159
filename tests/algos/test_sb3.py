"""SB3 baselines: VecEnv adapter sanity, per-voxel distribution, PPO/A2C train + save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from agents.sb3.train import SB3Policy, detect_algo, load_sb3, split_config, train_sb3
from agents.sb3.vec_env import SB3VecEnv
from agents.sb3.policy import VoxelCategorical

ENV = dict(patch_size=8, max_steps=3)
TINY = dict(width=4, depth=1, n_steps=3)  # 3 steps = one episode per env


# ------------------------------------------------------------------- adapter
@pytest.fixture(scope="module")
def venv():
    v = SB3VecEnv(ENV, num_envs=2)
    yield v
    v.close()


def test_adapter_spaces(venv):
    assert venv.num_envs == 2
    assert venv.observation_space.shape == (6, 8, 8, 8) and venv.observation_space.dtype == np.float32
    # flat MultiDiscrete (SB3 rejects multi-dimensional nvec), int8 to shrink the rollout buffer
    assert venv.action_space.shape == (512,) and venv.action_space.dtype == np.int8
    assert (venv.action_space.nvec == 4).all()


def test_adapter_reset_step_terminal(venv):
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (2, 6, 8, 8, 8) and obs.dtype == np.float32
    assert venv.observation_space.contains(obs[0])
    assert len(venv.reset_infos) == 2 and "dice" in venv.reset_infos[0]
    total = np.zeros(2)
    for t in range(3):
        actions = np.stack([venv.action_space.sample() for _ in range(2)])  # (n, V) int8
        obs, rew, dones, infos = venv.step(actions)
        assert obs.shape == (2, 6, 8, 8, 8) and obs.dtype == np.float32
        assert rew.shape == (2,) and rew.dtype == np.float32
        assert dones.shape == (2,) and dones.dtype == bool
        assert isinstance(infos, list) and len(infos) == 2
        total += rew
        if t < 2:
            assert not dones.any() and "terminal_observation" not in infos[0]
            assert infos[0]["reward_map"].shape == (8, 8, 8)
    assert dones.all()
    time_ch = 5  # CHANNEL_NAMES[-1] == "time"
    for i in range(2):
        term = infos[i]["terminal_observation"]
        assert term.shape == (6, 8, 8, 8) and term.dtype == np.float32
        assert np.allclose(term[time_ch], 1.0) and np.allclose(obs[i, time_ch], 0.0)  # autoreset in the same step
        assert infos[i]["TimeLimit.truncated"] is True
        assert infos[i]["episode"]["l"] == 3
        assert infos[i]["episode"]["r"] == pytest.approx(total[i], abs=1e-4)
        assert "dice_clean" in infos[i]  # the finished episode's metrics


def test_adapter_seeding_and_attrs(venv):
    venv.seed(11)
    a = venv.reset()
    venv.seed(11)
    b = venv.reset()
    np.testing.assert_array_equal(a, b)
    assert venv.get_attr("action_names") == [venv.venv.action_names] * 2
    assert venv.get_attr("max_steps", indices=[1]) == [3]
    states = venv.env_method("state_tensors")
    assert len(states) == 2 and states[0]["mask"].shape == (2, 8, 8, 8)
    venv.set_attr("render_mode", "rgb_array")
    assert venv.get_attr("render_mode") == ["rgb_array"] * 2
    frames = venv.get_images()
    assert len(frames) == 2 and frames[0].ndim == 3 and frames[0].shape[-1] == 3 and frames[0].dtype == np.uint8
    assert venv.env_is_wrapped(object) == [True, True] and venv.env_is_wrapped(int) == [False, False]


def test_adapter_rejects_bad_actions(venv):
    venv.reset()
    with pytest.raises(ValueError):
        venv.step(np.zeros((2, 10), np.int8))


# -------------------------------------------------------------- distribution
def test_voxel_categorical_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 2, 3, 5, generator=g)  # (B, K, D, H, W)
    actions = torch.randint(0, 4, (3, 30), generator=g)
    dist = VoxelCategorical(4, reduction="sum").proba_distribution(logits)
    flat = logits.reshape(3, 4, -1)
    ref_lp = torch.zeros(3)
    ref_ent = torch.zeros(3)
    for b in range(3):  # reference: one torch Categorical per voxel, summed
        for v in range(30):
            c = Categorical(logits=flat[b, :, v])
            ref_lp[b] += c.log_prob(actions[b, v])
            ref_ent[b] += c.entropy()
    torch.testing.assert_close(dist.log_prob(actions), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.entropy(), ref_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.log_prob(actions.float()), ref_lp, rtol=1e-5, atol=1e-5)  # SB3 buffer floats
    mean = VoxelCategorical(4).proba_distribution(logits)  # default reduction: per-voxel mean
    torch.testing.assert_close(mean.log_prob(actions), ref_lp / 30, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean.entropy(), ref_ent / 30, rtol=1e-5, atol=1e-6)
    assert torch.equal(mean.mode(), flat.argmax(1))


def test_voxel_categorical_sampling_frequencies():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().view(1, 4, 1, 1, 1).expand(1, 4, 20, 50, 50)
    s = VoxelCategorical(4).proba_distribution(logits).sample()
    assert s.shape == (1, 50000) and s.dtype == torch.int64
    freq = torch.bincount(s.ravel(), minlength=4).float() / s.numel()
    assert torch.allclose(freq, probs, atol=0.01)  # 50k draws: sd ~0.002


def test_split_config_rejects_unknown():
    algo_kw, pol_kw = split_config("ppo", {"width": 8, "n_epochs": 2})
    assert pol_kw["width"] == 8 and algo_kw["n_epochs"] == 2 and algo_kw["gamma"] == 0.95
    with pytest.raises(ValueError, match="unknown ppo option"):
        split_config("ppo", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown SB3 algorithm"):
        split_config("dqn", {})


# ------------------------------------------------------------ train / save / load
@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_train_save_load_roundtrip(algo, tmp_path):
    extra = dict(batch_size=3, n_epochs=1) if algo == "ppo" else {}
    out = tmp_path / algo
    pol = train_sb3(algo, ENV, timesteps=2 * 2 * 3, num_envs=2, seed=0, out=out, progress=False, **TINY, **extra)
    assert isinstance(pol, SB3Policy) and pol.algo == algo
    assert pol.model.num_timesteps == 12
    assert pol.model.rollout_buffer.actions.dtype == np.int8  # SB3's buffer keeps the adapter's small dtype
    for f in ("model.zip", "config.json", "metrics.csv"):
        assert (out / f).is_file(), f
    assert list(out.glob("events.out.tfevents.*"))
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) >= 3 and "rollout/dice_clean" in lines[0]
    assert detect_algo(out / "model.zip") == algo
    loaded = load_sb3(out / "model.zip")
    obs = np.random.default_rng(0).random((2, 6, 8, 8, 8), dtype=np.float32)
    a = pol.act(obs)
    assert a.shape == (2, 8, 8, 8) and a.dtype == np.int64
    np.testing.assert_array_equal(a, loaded.act(obs))
    # fully convolutional: another patch size works too
    assert loaded.act(np.zeros((1, 6, 12, 8, 10), np.float32)).shape == (1, 12, 8, 10)
    # and the keep-biased initial policy keeps (almost) every voxel
    assert (a == 0).mean() > 0.9


def test_resume_continues(tmp_path):
    out = tmp_path / "run"
    train_sb3("a2c", ENV, timesteps=6, num_envs=2, out=out, progress=False, **TINY)
    pol = train_sb3("a2c", ENV, timesteps=6, num_envs=2, resume=out, progress=False, **TINY)
    assert pol.model.num_timesteps == 12
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 2  # header + one row per update
    with pytest.raises(ValueError, match="a2c model, not ppo"):
        train_sb3("ppo", ENV, timesteps=6, num_envs=2, resume=out, progress=False, **TINY)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sb3(tmp_path / "missing.zip")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a stable-baselines3"):
        load_sb3(bad)


def test_cli_train_ppo(tmp_path):
    from agents.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--agent", "ppo", "--updates", "1", "--num-envs", "2", "--patch-size", "8",
               "--max-steps", "2", "--out", str(out), "--no-progress"])
    assert rc == 0 and (out / "model.zip").is_file()
    assert main(["train", "--agent", "a2c", "--updates", "1", "--workers", "2", "--out", str(out)]) == 2


# ------------------------------------------------------------ reward wrappers
def test_adapter_steps_a_reward_wrapper():
    from types import SimpleNamespace

    from gymnasium.vector import AutoresetMode

    from svl_env import EnvConfig, SVLDRLVectorEnv
    from svl_env.wrappers import VectorScaleReward

    cfg = EnvConfig.from_any(ENV).replace(autoreset_mode=AutoresetMode.SAME_STEP)
    plain = SB3VecEnv(env=SVLDRLVectorEnv(2, config=cfg))
    scaled = SB3VecEnv(env=VectorScaleReward(SVLDRLVectorEnv(2, config=cfg), 10.0))
    assert scaled.native is scaled.venv.unwrapped and scaled.patch_shape == (8, 8, 8)
    assert scaled.get_attr("max_steps") == [3, 3]  # attributes come from the native env
    for v in (plain, scaled):
        v.seed(5)
        v.reset()
    a = np.zeros((2, 512), np.int8)
    a[:, ::7] = 1  # the same edits in both
    for _ in range(3):
        _, r0, d0, i0 = plain.step(a)
        _, r1, d1, i1 = scaled.step(a)
        np.testing.assert_allclose(r1, 10.0 * r0, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(i1[0]["reward_map"], 10.0 * i0[0]["reward_map"], rtol=1e-5, atol=1e-8)
    assert d1.all() and i1[0]["episode"]["r"] == pytest.approx(10.0 * i0[0]["episode"]["r"], rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="SVLDRLVectorEnv"):
        SB3VecEnv(env=SimpleNamespace(unwrapped=object()))  # not the project's env underneath
    plain.close()
    scaled.close()


def test_train_reward_options_and_callbacks(tmp_path):
    from stable_baselines3.common.callbacks import BaseCallback

    class Count(BaseCallback):
        rollouts = 0

        def _on_step(self):
            return True

        def _on_rollout_end(self):
            Count.rollouts += 1

    out = tmp_path / "run"
    train_sb3("ppo", ENV, timesteps=6, num_envs=2, out=out, progress=False, batch_size=3, n_epochs=1,
              reward_scale=10.0, normalize_reward=True, callbacks=[Count()], **TINY)
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["reward_scale"] == 10.0 and cfg["normalize_reward"] is True
    assert Count.rollouts == 1
    with pytest.raises(ValueError, match="reward_scale"):
        train_sb3("ppo", ENV, timesteps=6, num_envs=2, progress=False, reward_scale=0.0, **TINY)
