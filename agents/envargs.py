"""Command-line options that describe an environment, shared by every subcommand."""

from __future__ import annotations

import argparse


def add_env_arguments(parser: argparse.ArgumentParser, *, default_noise: str | None = None) -> None:
    g = parser.add_argument_group("environment")
    g.add_argument("--data", default="phantom",
                   help="'phantom' (built-in procedural volumes) or a Decathlon folder (imagesTr/, labelsTr/)")
    g.add_argument("--labels", choices=("clean", "noisy"), default="clean",
                   help="for a folder: are labelsTr the truth (noise is simulated) or the noisy annotations?")
    g.add_argument("--label-value", type=int, default=1, help="label value to segment in multi-label files")
    g.add_argument("--noise", default=default_noise,
                   help="annotation noise: none, mt, sp, markov, flip, a mixture 'mt+flip' or 'mt:side_max=9' "
                        "(default: mt when the truth is known)")
    g.add_argument("--noise-ratio", type=float, default=1.0, help="fraction of episodes whose annotation is noisy")
    g.add_argument("--patch-size", type=int, nargs="+", default=[32], metavar="N",
                   help="patch size in voxels: one int or three (D H W)")
    g.add_argument("--max-steps", type=int, default=5, help="steps per episode (t_max)")
    g.add_argument("--reward-target", choices=("clean", "annotation"), default=None,
                   help="Dice against the truth (clean, default when known) or the annotation")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def env_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for ``SVLDRLVectorEnv`` / ``gym.make("SVLDRL-v0", ...)`` from parsed args."""
    patch = args.patch_size[0] if len(args.patch_size) == 1 else tuple(args.patch_size)
    if len(args.patch_size) not in (1, 3):
        raise ValueError(f"--patch-size takes one or three integers, got {len(args.patch_size)}")
    kw = dict(data=args.data, patch_size=patch, noise=args.noise, noise_ratio=args.noise_ratio,
              max_steps=args.max_steps, device=args.device)
    if args.data != "phantom":
        kw.update(labels=args.labels, label_value=args.label_value)
    if args.reward_target is not None:
        kw["reward_target"] = args.reward_target
    elif args.data != "phantom" and args.labels == "noisy":
        kw["reward_target"] = "annotation"
    return kw
