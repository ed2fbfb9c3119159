"""Command-line options that describe an environment, shared by every subcommand."""

from __future__ import annotations

import argparse

from svl_env import EnvConfig


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


def env_config(args: argparse.Namespace) -> EnvConfig:
    """The environment the parsed options describe."""
    return EnvConfig.from_kwargs(**env_kwargs(args))


def env_kwargs(args: argparse.Namespace) -> dict:
    """The options the command line gives, as ``SVLDRLVectorEnv`` / ``gym.make("SVLDRL-v0", ...)``
    keyword arguments (plain values: what a registered agent's ``train(env_kwargs=...)`` gets)."""
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


def validate_env(env: EnvConfig | dict) -> None:
    """Check an environment configuration completely before a long job starts: the options
    (by building a one-env ``SVLDRLVectorEnv``) and, for a NIfTI folder, every case (each file is
    read once and released). Raises the env's own errors (ValueError, FileNotFoundError,
    ``svl_env.data.nifti.DataError`` naming the file)."""
    from pathlib import Path

    from gymnasium.vector import AutoresetMode

    from svl_env import SVLDRLVectorEnv

    cfg = EnvConfig.from_any(env).replace(autoreset_mode=AutoresetMode.DISABLED, return_tensors=False,
                                          action_rewards=False)
    if isinstance(cfg.data, (str, Path)) and str(cfg.data) != "phantom":
        cfg = cfg.replace(cache=False)  # read each case once to validate it, without keeping the volumes
    env = SVLDRLVectorEnv(1, config=cfg)
    try:
        cases = getattr(env.source, "cases", None)
        if hasattr(cases, "validate"):  # a Decathlon folder: read (and release) every case once
            found, labelled = False, False
            for i in range(len(cases)):
                lab = cases[i].label
                labelled = labelled or lab is not None
                found = found or (lab is not None and bool(lab.any()))
            if labelled and not found and getattr(cases, "label_value", None) is not None:
                raise ValueError(f"no case in {cases.root} has voxels with label value {cases.label_value} "
                                 "(--label-value): every label mask would be empty")
    finally:
        env.close()


def check_train_budget_args(args: argparse.Namespace, workers_hint: str) -> None:
    """The `svl-drl train` checks every non-vA3C trainer shares (one-line ValueErrors)."""
    if getattr(args, "workers", 0):
        raise ValueError(f"--workers applies to vA3C only ({workers_hint})")
    if args.minutes is not None and args.minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {args.minutes}")
    if args.updates is not None and args.updates < 1:
        raise ValueError(f"--updates must be >= 1, got {args.updates}")
    if args.num_envs < 1:
        raise ValueError(f"--num-envs must be >= 1, got {args.num_envs}")
