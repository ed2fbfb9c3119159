"""GPU-resident path (CUDA only; skipped without a GPU): env state and outputs stay on the device
and vA3C's synchronous mode steps the env with device tensors end to end.

What is NOT device-resident (by design, see README "Scaling out"): connected-component counting
copies the (B, D, H, W) mask to the host once per step (scipy), and the (B,) rewards /
truncation flags and the actions' min/max check are tiny host round trips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ENV = dict(patch_size=16, max_steps=3)


def test_vector_env_returns_device_tensors_without_host_copies():
    from svl_env import SVLDRLVectorEnv

    env = SVLDRLVectorEnv(4, device="cuda", return_tensors=True, **ENV)
    obs, info = env.reset(seed=0)
    assert torch.is_tensor(obs) and obs.is_cuda and obs.dtype == torch.float32
    assert all(torch.is_tensor(v) and v.is_cuda for k, v in info.items() if not k.startswith("_"))
    state = env.state_tensors()
    assert all(v.is_cuda for k, v in state.items() if torch.is_tensor(v))
    a = torch.randint(0, 4, (4, 16, 16, 16), device="cuda")
    obs2, rew, term, trunc, info = env.step(a)
    assert obs2.is_cuda and rew.is_cuda and info["reward_map"].is_cuda
    # handed over, not shared: the returned observation is a fresh device tensor (no host detour)
    assert obs2.data_ptr() != state["mask"].data_ptr()
    torch.testing.assert_close(info["reward_map"].sum((1, 2, 3)).double(), rew.double(), atol=1e-5, rtol=1e-5)
    # the same episode as on the CPU (seeded keys drive every random draw)
    cpu = SVLDRLVectorEnv(4, device="cpu", return_tensors=True, **ENV)
    obs_c, _ = cpu.reset(seed=0)
    torch.testing.assert_close(obs_c, obs.cpu())
    env.close()
    cpu.close()


def test_va3c_sync_mode_keeps_the_loop_on_the_device(monkeypatch):
    from svl_env import SVLDRLVectorEnv
    from agents.va3c.train import run_training

    seen = {"steps": 0, "host_actions": 0, "host_obs": 0}
    real_step = SVLDRLVectorEnv.step

    def step(self, actions):
        out = real_step(self, actions)
        seen["steps"] += 1
        seen["host_actions"] += int(not (torch.is_tensor(actions) and actions.is_cuda))
        seen["host_obs"] += int(not (torch.is_tensor(out[0]) and out[0].is_cuda))
        return out

    monkeypatch.setattr(SVLDRLVectorEnv, "step", step)
    cfg = dict(width=4, depth=1, num_envs=2, warmup_frac=0.25, value_frac=0.25, warmup_reuse=1)
    pol, _, run = run_training(dict(ENV, device="cuda"), updates=4, seed=0, progress=False, **cfg)
    assert seen["steps"] > 0 and seen["host_actions"] == 0 and seen["host_obs"] == 0
    assert all(p.is_cuda for p in run.model.parameters())
    assert all(np.isfinite(m["loss"]) for m in run.history if "loss" in m)
    a = pol.act(torch.rand(1, 6, 16, 16, 16, device="cuda"))
    assert a.shape == (1, 16, 16, 16) and a.dtype == np.int64


def test_rllib_module_on_cuda():
    pytest.importorskip("ray.rllib")
    from agents.rllib.net import VoxelPPONet
    from agents.rllib.module import VoxelCategorical

    net = VoxelPPONet(6, 4, width=4, depth=1).cuda()
    logits, value = net(torch.rand(2, 6, 8, 8, 8, device="cuda"))
    d = VoxelCategorical.from_logits(logits)
    a = d.sample()
    assert a.is_cuda and a.shape == (2, 8, 8, 8) and d.logp(a).shape == (2,) and value.shape == (2,)
