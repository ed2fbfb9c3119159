"""``svl-drl train``: one set of options for every agent in ``agents.registry``.

Each agent's ``train_cli(args) -> Path`` (the run folder) does the rest. It writes into
``--out``: checkpoints, ``metrics.csv``, TensorBoard event files; ``--resume RUN`` continues a run.
"""

from __future__ import annotations

import argparse

from agents import registry
from agents.cli.envargs import add_env_arguments
from agents.common.precision import add_precision_argument

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", choices=registry.agent_names(), default="va3c", help="which agent to train")
    p.add_argument("--out", default="runs/train", help="run folder (checkpoints, metrics.csv, TensorBoard)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in this folder from its last checkpoint (written back into it). "
                        "vA3C checkpoint.pt files are tensor-only and safe to load; PPO/A2C model.zip files are "
                        "SB3's format with pickles inside that can run code when loaded: resume only runs from "
                        "a trusted source")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="warm start: begin from the network of a supervised (or va3c) checkpoint.pt or run folder "
                        "of the same network shape (va3c then skips its Warmup stage; ppo/a2c take the "
                        "checkpoint's backbone and policy head)")
    budget = p.add_argument_group("budget")
    budget.add_argument("--minutes", type=float, default=None, help="wall-clock training budget")
    budget.add_argument("--updates", type=int, default=None, help="number of updates (default 200 if no --minutes)")
    p.add_argument("--workers", type=int, default=0,
                   help="vA3C: asynchronous worker processes (0 = synchronous batched mode)")
    p.add_argument("--num-envs", type=int, default=8, help="environments per worker / rollout batch "
                                                             "(rllib-ppo: per env runner)")
    ray = p.add_argument_group("rllib-ppo (Ray RLlib; pip install \"svl-drl[rllib]\")")
    ray.add_argument("--num-env-runners", type=int, default=None,
                     help="Ray actors stepping environments in parallel (default 2; 0: sample in the driver)")
    ray.add_argument("--address", default=None,
                     help="an existing Ray cluster to run on ('auto', HOST:PORT or ray://HOST:10001); "
                          "default: start a local Ray instance")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (data, noise, network init)")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="updates between periodic checkpoints (0: only the final one); Ctrl-C finishes the "
                        "current update and writes one too, then exits with status 130")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precision_argument(p, "; vA3C's --resume keeps the run's own unless given")
    add_env_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.agent != "rllib-ppo" and (args.num_env_runners is not None or args.address is not None):
        raise ValueError("--num-env-runners and --address apply to --agent rllib-ppo only")
    spec = registry.get_agent(args.agent)
    if args.init_from is not None and not spec.takes_init_from:
        warm = ", ".join(n for n in registry.agent_names() if registry.get_agent(n).takes_init_from)
        raise ValueError(f"--init-from applies to {warm}, not {args.agent}")
    if args.init_from is not None and args.resume is not None:
        raise ValueError("give --resume or --init-from, not both (a resumed run keeps its own weights)")
    run_dir = registry.resolve(registry.get_agent(args.agent).train_cli)(args)
    print(f"run written to {run_dir}")
    return 0
