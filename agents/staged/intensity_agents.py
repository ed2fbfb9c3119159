"""The paper's intensity agents: every voxel edits its own intensity (keep / enhance / weaken,
``I' = clip(I (1 ± 0.3 ε), 0, 1)``, ε ~ U(0, 1)), and the mask is the segmentation of the edited
volume by *this* network -- ``svl_env.SVLDRLVectorEnv(action_set="intensity", segmenter=model)``.

Episodes start from the segmentation of the unedited patch (``initial_mask="segmenter"``); the
reward is the environment's composite against the current training labels
(``reward_target="annotation"``: the given labels, or their refinement of the previous round).
The policy (intensity head of the policy decoder) and the value decoder (its second channel)
see the edited volume through the shared encoder at every step. The agents' edits feed back
into training: the segmentation loss of an intensity update is taken on the *edited* volume of
the episode's last step, so the segmentation decoder learns on the states the agents produce
(the paper: each voxel agent refines its own state representation during training).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from svl_env import SVLDRLVectorEnv
from svl_env.data.sources import CaseSource

from agents.common.distributions import gumbel_sample
from agents.staged.losses import actor_critic_losses
from agents.staged.model import StagedNet, state_channels

__all__ = ["IntensityAgentEpisodes"]


class IntensityAgentEpisodes:
    """Batched intensity-agent episodes over the current training labels (see module doc)."""

    def __init__(self, training_set, *, num_envs: int, patch_shape, max_steps: int = 2, reward_weights=None,
                 gamma: float = 0.95, entropy_coef: float = 0.01, device="cpu"):
        self.ts = training_set
        self.num_envs = int(num_envs)
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.max_steps = int(max_steps)
        self.reward_weights = reward_weights
        self.gamma, self.entropy_coef = float(gamma), float(entropy_coef)
        self.device = torch.device(device)
        self._env = None
        self._labels = None

    def env(self, model) -> SVLDRLVectorEnv:
        if self._env is None or self._labels is not self.ts.current:
            src = self.ts.source()
            annotated = CaseSource(src.cases, labels="noisy", fg_prob=src.fg_prob)  # labels = the annotation
            self._env = SVLDRLVectorEnv(self.num_envs, data=annotated, patch_size=self.patch_shape,
                                        action_set="intensity", segmenter=model, reward_target="annotation",
                                        initial_mask="segmenter", max_steps=self.max_steps,
                                        reward_weights=self.reward_weights, device=self.device, return_tensors=True,
                                        autoreset_mode=AutoresetMode.DISABLED)
            self._labels = self.ts.current
        self._env.segmenter = model
        return self._env

    def run(self, model: StagedNet, seed: int, seg_loss_fn) -> dict:
        env = self.env(model)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        seeds = [int(s) for s in np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 1]).generate_state(self.num_envs)
                 & 0x7FFFFFFF]
        env.reset(seed=seeds)
        s = env.state_tensors()
        target = s["target"]
        # one voxel's share of a Dice change ~ 2 / (|f| + |G|): scaled to ~1 (as for the label agents)
        scale = ((s["mask"].sum((1, 2, 3)) + target.sum((1, 2, 3))) / 2).clamp_min(1.0).view(-1, 1, 1, 1)
        logits, actions, values, rewards = [], [], [], []
        reward_sum = torch.zeros(self.num_envs, dtype=torch.float64)
        for t in range(self.max_steps):
            st = env.state_tensors()
            image = st["image"][:, None]
            feats = model.encode(image)
            seg_prob = torch.sigmoid(model.seg_logits(feats, image.shape[-3:]).detach())[:, 0]
            state = state_channels(st["mask"], target, seg_prob, t, self.max_steps)
            _, int_logits, val = model.agent_outputs(feats, state)
            a = gumbel_sample(int_logits, gen)
            _, r, _, _, info = env.step(a)
            logits.append(int_logits)
            actions.append(a)
            values.append(val[:, 1])
            rewards.append(info["reward_map"].float() * scale)
            reward_sum += torch.as_tensor(r, dtype=torch.float64).cpu()
        ac = actor_critic_losses(logits, actions, values, rewards, self.gamma, None, None, self.entropy_coef, 0.0)
        edited = env.state_tensors()["image"][:, None]
        dice_loss = seg_loss_fn(model(edited), target[:, None])
        return {"dice_loss": dice_loss, "value_loss": ac["value"], "policy_loss": ac["policy"],
                "episode_reward": float(reward_sum.mean()), "entropy": float(ac["entropy"])}
