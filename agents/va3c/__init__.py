"""vA3C: the voxel-level advantage actor-critic of SVL-DRL (PixelRL's method, in 3D).

Every voxel is an agent; one fully-convolutional ``PolicyValueNet`` (agents.common.networks), shared by
all of them, outputs K action logits and a value per voxel. Training runs the paper's stages on
``SVLDRLVectorEnv`` (label actions by default):

1. **warmup** -- supervised, trunk + policy head: the policy's *outcome* must match the reward
   target G (``env.state_tensors()["target"]``: the truth on the simulated-noise benchmark, the
   given annotation otherwise). With per-action candidate states c_a (``label_candidates``),
   ``p_fg = Σ_a π_a c_a`` is the probability the voxel ends foreground and
   ``P_ok = Σ_a π_a [c_a = g]`` the probability it ends right;
   ``L_sup = w_dice (1 - softDice(p_fg, G)) + w_ce (-log P_ok)``. Several actions can be right
   (keep and set_foreground on a correct foreground voxel): the cross-entropy is on the
   *outcome* (the marginal over right actions), never on one arbitrary action. States come from
   greedy rollouts of the current policy (DAgger-style: the states the deterministic policy
   will meet), each rollout reused for ``warmup_reuse`` gradient steps on random minibatches
   of its states with random flips / axis permutations: collecting a batch of episodes (reset +
   max_steps forward passes and env steps) costs about as much as several gradient steps.
2. **value** -- ``(sup_coef) L_sup + value_coef L_value``: the critic learns returns of the
   warmed-up policy before it drives the policy (the paper's Transition stage).
3. **policy** -- ``sup_coef L_sup + value_coef L_value + policy_coef L_pg + mac_coef L_mac``.

Actor-critic (PixelRL, per voxel, averaged over voxels): rewards ``r_t`` = ``info["reward_map"]``
(its voxels sum to the scalar reward exactly) times ``reward_scale``; returns backwards over a
segment of ``t_max`` steps, ``R = r_t + γ·(w * R_{t+1})``, from ``V(s_T)`` (detached) when the
segment stops mid-episode and from 0 when the episode ends there (a truncated episode has no
future reward: only the final mask is scored). ``w`` is a learnable 3x3x3 convolution
initialised to the identity delta (``reward_conv``), trained by the value loss as in PixelRL,
so a voxel's return includes its neighbours'. ``A = R - V``;
``L_pg = -log π(a_t|s_t)·A.detach() - entropy_coef·H(π)``; ``L_value = 0.5 (R - V)^2``.
With ``action_rewards=True`` the env also returns what each action would have earned at each
voxel (``info["action_rewards"]``, (B, K, D, H, W)); the all-action (mean actor-critic) term
``L_mac = -Σ_a π_a · Q_a`` with ``Q = reward_scale · action_rewards`` is an exact, zero-variance
policy gradient of the immediate reward (no sampled action in it).

Initialisation: the policy head's "keep" logit starts at ``keep_bias`` (2.0), so the untrained
policy is the identity (it returns the annotation) instead of a uniform random editor that
first has to escape its own damage (the failure of a from-scratch PixelRL attempt).

Reward scaling: the per-voxel reward map is tiny (~1e-4: one voxel's share of a patch-level Dice
change), so ``reward_scale="voxels"`` (default) multiplies it by the patch's voxel count
N = D·H·W -- a flipped voxel is then worth ~2N/(|f|+|G|) ~ 3..25 (one over the foreground
fraction) and the returns are O(1..10), in the range where lr 1e-3 and unit-scale losses work.
A float gives a fixed factor instead.

Execution: synchronous batched (``workers=0``, default; CPU or CUDA, reproducible from the seed:
update u resets its envs with seeds drawn from ``(seed, u)`` and samples actions from a
generator seeded by ``(seed, u)``, so no RNG state is carried and a resumed run equals an
uninterrupted one), or asynchronous (``workers=n``): n torch.multiprocessing (spawn) processes
share the model (``share_memory()``) and one Adam whose state tensors live in shared memory
(Hogwild updates), each with its own envs and seed. A worker that fails is reported to the main
process, which stops the others and raises ``RuntimeError`` -- never hangs.
"""

from agents.common.budget import Budget, update_seed
from agents.va3c.config import DEFAULT_CONFIG, KIND, STAGES, lr_at, make_config, stage_at
from agents.va3c.learner import Learner
from agents.va3c.losses import a2c_segment_loss, label_candidates, supervised_loss
from agents.va3c.memory import check_training_memory, estimate_training_bytes
from agents.va3c.model import RewardMapConv, VA3CModel
from agents.common.checkpoint import resolve_checkpoint
from agents.va3c.policy import VA3CPolicy
from agents.va3c.run import VA3CRun
from agents.va3c.train import run_training, train_from_args, train_va3c

__all__ = ["DEFAULT_CONFIG", "KIND", "STAGES", "Budget", "Learner", "RewardMapConv", "VA3CModel", "VA3CPolicy",
           "VA3CRun", "a2c_segment_loss", "check_training_memory", "estimate_training_bytes", "label_candidates",
           "lr_at", "make_config", "resolve_checkpoint", "run_training", "stage_at", "supervised_loss",
           "train_from_args", "train_va3c", "update_seed"]
