"""``svl-drl``: the command line. One module per subcommand, each with ``add_arguments`` and ``run``.

Exit codes: 0 success, 2 bad input (one line on stderr: ``svl-drl <cmd>: error: ...``),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Before torch loads OpenMP: idle threads sleep instead of spinning. On cores shared with other
# jobs, spinning OpenMP threads made training 3-5x slower and burnt CPU-time budgets (measured);
# on an idle machine the difference is within noise. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# subcommand -> (module, one-line help). Modules import lazily so `--help` stays fast.
COMMANDS = {
    "train": ("agents.cli.train", "train an agent (va3c, supervised, voxel-ppo, ppo, a2c, rllib-ppo) on SVLDRL-v0"),
    "evaluate": ("agents.cli.evaluate", "score a trained agent on seeded episodes against the truth"),
    "refine": ("agents.cli.refine", "refine noisy NIfTI label volumes with a trained agent"),
    "benchmark": ("agents.cli.benchmark", "run policies on identical seeded episodes; write a leaderboard"),
    "pipeline": ("agents.cli.pipeline", "staged SVL-DRL on a folder with noisy labels: refined labels + model"),
    "segment": ("agents.cli.segment", "segment new NIfTI images with a pipeline model"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, help_)
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative ones (None, False) and those a help text states."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (like every other input error), exit code 2; --help has the rest."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="svl-drl",
        description="Voxel-level deep RL for refining noisy 3D segmentation annotations (SVL-DRL).",
        epilog="Run 'svl-drl COMMAND --help' for the options of each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                           formatter_class=_HelpFormatter)
        importlib.import_module(mod).add_arguments(p)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("svl-drl")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    mod = importlib.import_module(_available()[args.command][0])
    from agents.common.checkpoint import CheckpointError  # noqa: F401  (a ValueError, caught below)

    try:
        return int(mod.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"svl-drl {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # an allocation the memory guard could not foresee (e.g. a huge volume)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "allocation failed"
        print(f"svl-drl {args.command}: error: out of memory ({msg}); use smaller inputs, patches or batches",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"svl-drl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
