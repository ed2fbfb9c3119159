"""The agent registry: one line per trainable agent, read by ``train``, ``evaluate``, ``refine``
and ``benchmark`` (CLI and Python API alike).

An entry names where the agent's functions live as ``"module:attribute"`` strings, imported
only when used: ``svl-drl --help`` stays fast and an agent's optional dependencies (Ray,
stable-baselines3) are needed only by whoever uses that agent. Adding an agent is one package
plus one ``register_agent`` call::

    from agents.registry import AgentSpec, register_agent
    register_agent(AgentSpec(name="mine", label="My agent", train="mypkg.train:train",
                             load="mypkg.policy:load", train_cli="mypkg.train:train_from_args",
                             kind="mine"))

The functions' contracts:

- ``train(*, env_kwargs, seed, out, progress, updates=None, minutes=None, cpu_minutes=None,
  **options) -> Policy``: train for the budget (whichever limit ends first), write the run
  folder ``out`` (its policy file is ``out / spec.checkpoint``) and return the policy. It is
  called with keywords only. Agents with ``takes_init_from`` also take ``init_from=PATH`` (a
  warm start from a ``supervised`` checkpoint: ``agents.common.init_from``, ``--init-from``,
  the benchmark's warm-start track).
- ``load(path, device="cpu") -> Policy``: a trained policy from its file or run folder.
- ``train_cli(args) -> Path``: ``svl-drl train --agent NAME`` (the parsed options of
  ``agents/cli/train.py``); returns the run folder.
- ``kind``: the ``kind`` the agent records in the project's tensor-only checkpoints
  (``agents.common.checkpoint``), which is how ``evaluate`` / ``refine`` recognise its files;
  ``suffix`` instead for agents with a file format of their own (SB3's ``.zip``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["AgentSpec", "register_agent", "unregister_agent", "get_agent", "agent_names", "resolve",
           "load_policy"]


def resolve(ref: str | Callable) -> Callable:
    """``"package.module:attr.attr"`` -> the object (imported now); a callable is returned as is."""
    if callable(ref):
        return ref
    mod, _, attr = str(ref).partition(":")
    obj: Any = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class AgentSpec:
    """One trainable agent (see the module docstring for the functions' contracts)."""

    name: str
    label: str
    train: str | Callable
    load: str | Callable
    train_cli: str | Callable
    checkpoint: str = "checkpoint.pt"
    kind: str | None = None
    suffix: str | None = None
    #: keyword arguments bound to ``train`` and ``load`` (one implementation serving two agents)
    bound: dict = field(default_factory=dict)
    #: a default learned row of ``svl-drl benchmark``
    in_benchmark: bool = False
    #: ``train`` takes ``workers`` (asynchronous worker processes)
    takes_workers: bool = False
    #: ``train`` takes ``precision`` ("auto", "fp32" or "bf16"; ``agents.common.precision``)
    takes_precision: bool = False
    #: ``train`` takes ``init_from`` (warm start from a ``supervised`` / vA3C checkpoint, ``agents.common.init_from``)
    takes_init_from: bool = False
    #: ``claims(path, **bound) -> bool``: is this file this agent's? (formats shared by agents)
    claims: str | Callable | None = None
    description: str = ""
    #: the agent the statistics compare it with (``agents.eval.stats``: P(this > control)): an
    #: agent or heuristic name. vA3C's is ``supervised``, its own network without the RL stages.
    control: str = "identity"

    def train_fn(self) -> Callable:
        fn = resolve(self.train)
        return (lambda *a, **kw: fn(*a, **self.bound, **kw)) if self.bound else fn

    def load_policy(self, path, device="cpu"):
        """The trained policy in ``path`` (a file or its run folder), labelled ``self.label``."""
        path = Path(path)
        if path.is_dir() and (path / self.checkpoint).is_file():
            path = path / self.checkpoint
        pol = resolve(self.load)(path, device=device, **self.bound)
        try:
            pol.name = self.label
        except AttributeError:  # a read-only property: keep the policy's own name
            pass
        return pol


_AGENTS: dict[str, AgentSpec] = {}


def register_agent(spec: AgentSpec, *, replace: bool = False) -> AgentSpec:
    """Add ``spec``; ``replace=True`` to overwrite an entry of the same name."""
    if not isinstance(spec, AgentSpec):
        raise TypeError(f"register_agent takes an AgentSpec, got {type(spec).__name__}")
    if spec.name in _AGENTS and not replace:
        raise ValueError(f"an agent named {spec.name!r} is already registered")
    if spec.kind is not None and any(s.kind == spec.kind and s.name != spec.name for s in _AGENTS.values()):
        raise ValueError(f"checkpoint kind {spec.kind!r} is already used by another agent")
    _AGENTS[spec.name] = spec
    return spec


def unregister_agent(name: str) -> None:
    _AGENTS.pop(name, None)


def get_agent(name: str) -> AgentSpec:
    try:
        return _AGENTS[name]
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; registered: {', '.join(agent_names())}") from None


def agent_names(*, benchmark: bool = False) -> tuple[str, ...]:
    """Registered agent names in registration order (``benchmark``: only default benchmark rows)."""
    return tuple(n for n, s in _AGENTS.items() if s.in_benchmark or not benchmark)


def _spec_for_file(path: Path) -> AgentSpec:
    """The agent whose policy file ``path`` is: by its format's suffix (and ``claims`` where
    agents share a format), else by the ``kind`` recorded in the project's checkpoint."""
    from agents.common.checkpoint import CheckpointError, load_checkpoint

    by_suffix = [s for s in _AGENTS.values() if s.suffix is not None and path.suffix == s.suffix]
    for spec in by_suffix:
        if spec.claims is None or resolve(spec.claims)(path, **spec.bound):
            return spec
    if by_suffix:
        raise CheckpointError(f"{path}: no registered agent recognises this {path.suffix} file")
    kinds = {s.kind: s for s in _AGENTS.values() if s.kind is not None}
    ck = load_checkpoint(path, tuple(kinds))
    if ck["kind"] not in kinds:  # pragma: no cover - load_checkpoint already refuses other kinds
        raise CheckpointError(f"{path}: checkpoint of kind {ck['kind']!r}; no agent registered for it")
    return kinds[ck["kind"]]


def _sb3_zip_is(path, algo: str) -> bool:
    return resolve("agents.sb3:detect_algo")(path) == algo


def policy_file(path) -> Path:
    """The policy file of a run folder (or ``path`` itself when it is a file)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_file():
        return p
    for spec in _AGENTS.values():
        if (p / spec.checkpoint).is_file():
            return p / spec.checkpoint
    found = sorted(f for s in _AGENTS.values() if s.suffix for f in p.glob(f"*{s.suffix}"))
    if found:
        return found[-1]
    looked = ", ".join(sorted({s.checkpoint for s in _AGENTS.values()}))
    raise FileNotFoundError(f"policy file not found in {p} (looked for {looked})")


def load_policy(path, device="cpu") -> tuple[Any, AgentSpec]:
    """Any registered agent's trained policy from a run folder or file -> (policy, its spec).

    SB3 zips hold pickles that run code when loaded: load only files from a trusted source.
    """
    file = policy_file(path)
    spec = _spec_for_file(file)
    return spec.load_policy(file, device=device), spec


# ----------------------------------------------------------------------- the built-in agents
register_agent(AgentSpec(
    name="va3c", label="vA3C", kind="va3c", in_benchmark=True, takes_workers=True, takes_precision=True,
    control="supervised", takes_init_from=True,
    train="agents.va3c:train_va3c", load="agents.va3c:VA3CPolicy.load", train_cli="agents.va3c:train_from_args",
    description="voxel-level A3C (PixelRL-style), trained in stages: Warmup -> value -> policy"))
register_agent(AgentSpec(
    name="supervised", label="supervised (vA3C net, Warmup loss only)", kind="supervised", in_benchmark=True,
    takes_workers=True,
    takes_precision=True, takes_init_from=True,
    train="agents.supervised:train_supervised", load="agents.supervised:SupervisedPolicy.load",
    train_cli="agents.supervised:train_from_args",
    description="control: vA3C's network and Warmup loss for the whole budget, no value or policy stage"))
register_agent(AgentSpec(
    name="voxel-ppo", label="voxel-PPO", kind="voxel-ppo", in_benchmark=True, takes_precision=True,
    takes_init_from=True,
    train="agents.voxel_ppo:train", load="agents.voxel_ppo:load", train_cli="agents.voxel_ppo:train_from_args",
    description="single-file PPO on per-voxel advantages from reward_map (agents/voxel_ppo.py)"))
register_agent(AgentSpec(
    name="ppo", label="PPO (SB3)", suffix=".zip", checkpoint="model.zip", bound={"algo": "ppo"}, in_benchmark=True,
    claims=_sb3_zip_is, takes_precision=True, takes_init_from=True,
    train="agents.sb3:train_sb3", load="agents.sb3:load_sb3", train_cli="agents.sb3:train_from_args",
    description="stable-baselines3 PPO with a fully-convolutional per-voxel policy"))
register_agent(AgentSpec(
    name="a2c", label="A2C (SB3)", suffix=".zip", checkpoint="model.zip", bound={"algo": "a2c"}, in_benchmark=True,
    claims=_sb3_zip_is, takes_precision=True, takes_init_from=True,
    train="agents.sb3:train_sb3", load="agents.sb3:load_sb3", train_cli="agents.sb3:train_from_args",
    description="stable-baselines3 A2C with a fully-convolutional per-voxel policy"))
register_agent(AgentSpec(
    name="rllib-ppo", label="PPO (RLlib)", kind="rllib-ppo", takes_precision=True,
    train="agents.rllib:train_rllib", load="agents.rllib:RLlibPolicy.load", train_cli="agents.rllib:train_from_args",
    description='PPO on Ray RLlib with distributed env runners (pip install "svl-drl[rllib]")'))
