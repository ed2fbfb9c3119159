"""How strong is each annotation-noise protocol at each patch size? Dice of the annotation vs the truth.

For every noise spec (default: each protocol at its default parameters) and patch size, resets ``SVLDRLVectorEnv``
(phantoms, ``noise_ratio=1``: every episode corrupted) on ``--episodes`` seeded episodes
(episode i = reset seed ``--seed + i``, as in the benchmark) and prints a markdown table of
``info["dice_annotation_clean"]``: mean ± sd and the 5th-95th percentiles. Noise sizes are in
voxels, so the same protocol is harsher on smaller patches (README "Annotation noise").

    python benchmarks/noise_strength.py [--noise mt "mt:side_max=2" ...] [--patch-sizes 16,32] [--episodes 32]
"""

from __future__ import annotations

import argparse

import numpy as np

from svl_env import SVLDRLVectorEnv
from svl_env.noise import PROTOCOLS


def annotation_dice(noise: str, patch_size: int, episodes: int, seed: int) -> np.ndarray:
    """Dice(annotation, truth) of ``episodes`` seeded phantom episodes, (episodes,) float."""
    env = SVLDRLVectorEnv(episodes, patch_size=patch_size, noise=noise, noise_ratio=1.0)
    _, info = env.reset(seed=seed)
    env.close()
    return np.asarray(info["dice_annotation_clean"], dtype=float)


def table(noises, patch_sizes, episodes: int, seed: int) -> str:
    head = "| `noise=` | " + " | ".join(f"{p}³ mean ± sd | {p}³ 5th–95th pct." for p in patch_sizes) + " |"
    rows = [head, "|---|" + "---|---|" * len(patch_sizes)]
    for noise in noises:
        cells = []
        for p in patch_sizes:
            d = annotation_dice(noise, p, episodes, seed)
            lo, hi = np.percentile(d, [5, 95])
            cells += [f"{d.mean():.2f} ± {d.std(ddof=1):.2f}", f"{lo:.2f}–{hi:.2f}"]
        rows.append(f"| `{noise}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", nargs="+", default=list(PROTOCOLS),
                    help="noise specs, space-separated (default: every protocol at its defaults)")
    ap.add_argument("--patch-sizes", default="16,32", help="comma-separated cube sides in voxels")
    ap.add_argument("--episodes", type=int, default=32, help="seeded episodes per cell")
    ap.add_argument("--seed", type=int, default=0, help="episode i is the reset with seed SEED + i")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.patch_sizes.split(",")]
    print(f"Dice(annotation, truth) on the phantoms, {args.episodes} episodes "
          f"(seeds {args.seed}..{args.seed + args.episodes - 1}), noise_ratio=1:\n")
    print(table(args.noise, sizes, args.episodes, args.seed))


if __name__ == "__main__":
    main()
