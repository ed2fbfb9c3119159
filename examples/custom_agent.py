"""Your own policy on the leaderboard, beside the built-in agents, in a few dozen lines.

A policy is any object with ``act(obs, info, deterministic) -> (B, D, H, W) int64`` actions
(one per voxel) and a ``name``. This one, ``ContrastSnapPolicy``, snaps the annotation's
boundary to the image: a voxel just outside the annotation joins it if its intensity is
closer to the annotation's mean than to the surrounding tissue's, a boundary voxel inside
leaves if the opposite holds.

Run it (Python API)::

    python examples/custom_agent.py --episodes 32 --out runs/custom

or through the CLI, next to any built-in agents::

    svl-drl benchmark --agents identity,intensity,oracle \\
        --custom examples/custom_agent.py:ContrastSnapPolicy --out runs/custom
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from agents.eval import benchmark
from agents.common.policy import Policy
from svl_env import CHANNEL_NAMES, LABEL_ACTIONS

KEEP, SET_FG, SET_BG = (LABEL_ACTIONS.index(a) for a in ("keep", "set_foreground", "set_background"))
IMAGE, MASK, ANNOTATION = (CHANNEL_NAMES.index(c) for c in ("image", "mask", "annotation"))


class ContrastSnapPolicy(Policy):
    """Move the annotation's boundary by one voxel toward the image's edge (batched, no loops)."""

    name = "contrast snap (custom)"

    def act(self, obs, info=None, deterministic=True):
        x = torch.as_tensor(obs, dtype=torch.float32)
        img, mask, ann = x[:, IMAGE], x[:, MASK] > 0.5, x[:, ANNOTATION][:, None]
        grown = F.max_pool3d(ann, 3, 1, 1)[:, 0] > 0.5           # annotation dilated by one voxel
        shrunk = -F.max_pool3d(-ann, 3, 1, 1)[:, 0] > 0.5        # ... and eroded by one voxel
        inside, ring = ann[:, 0] > 0.5, grown & ~(ann[:, 0] > 0.5)
        # per-case mean intensity inside the annotation and in the ring just outside it
        mean = lambda m: ((img * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)).view(-1, 1, 1, 1)  # noqa: E731
        mu_in, mu_out = mean(inside.float()), mean(ring.float())
        closer_in = (img - mu_in).abs() < (img - mu_out).abs()
        target = torch.where(ring, closer_in, inside)                         # grow into look-alike voxels
        target = torch.where(inside & ~shrunk, closer_in, target)             # drop boundary voxels that differ
        actions = torch.full(mask.shape, KEEP, dtype=torch.int64)
        actions[target & ~mask] = SET_FG
        actions[~target & mask] = SET_BG
        return actions.numpy()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/custom_agent")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    result = benchmark.run(policies=[ContrastSnapPolicy()], agents=["identity", "intensity", "oracle"],
                           env_kwargs={"patch_size": args.patch_size}, episodes=args.episodes, seed=args.seed,
                           out=args.out, overlays=1, progress=not args.no_progress)
    print(result["leaderboard_md"].read_text())


if __name__ == "__main__":
    main()
