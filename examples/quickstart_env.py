"""SVLDRL-v0 in a few lines: one env, a vector of envs, the reward map, a rendered frame.

    python examples/quickstart_env.py [--out quickstart.png]
"""

import argparse

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import svl_env  # noqa: E402,F401  (registers SVLDRL-v0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="quickstart.png", help="where to save the rendered frames")
    args = ap.parse_args()

    env = gym.make("SVLDRL-v0", patch_size=32, noise="mt", render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    names = env.unwrapped.action_names
    print(f"obs {obs.shape}, channels {env.unwrapped.channel_names}, actions {names}")
    print(f"noisy annotation: Dice vs truth {info['dice_clean']:.3f}")
    before = env.render()
    majority = np.full(obs.shape[1:], names.index("majority"))
    for t in range(env.unwrapped.max_steps):
        obs, reward, terminated, truncated, info = env.step(majority)
        print(f"step {t + 1}: reward {reward:+.4f} (reward_map sums to {info['reward_map'].sum():+.4f}), "
              f"Dice vs truth {info['dice_clean']:.3f}, components {info['n_components']}")
    after = env.render()

    venv = gym.make_vec("SVLDRL-v0", num_envs=8, patch_size=32)
    obs, info = venv.reset(seed=0)
    print(f"vector env {type(venv).__name__}: obs {obs.shape}, mean annotation Dice {info['dice_clean'].mean():.3f}")

    fig, axes = plt.subplots(2, 1, figsize=(9, 6))
    for ax, frame, title in zip(axes, (before, after), ("annotation (yellow), truth (red), mask (green)",
                                                        "after 5 majority steps")):
        ax.imshow(frame)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"frames saved to {args.out}")


if __name__ == "__main__":
    main()
