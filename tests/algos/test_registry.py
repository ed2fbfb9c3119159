"""Adding an agent is one registration: a toy agent registered here is trained, evaluated,
refined with and benchmarked through the same CLI as the built-in ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents import registry
from agents.cli import main
from agents.common.checkpoint import load_checkpoint, save_checkpoint
from agents.common.policy import Policy

ACTION = 3  # "majority" everywhere: a policy that visibly changes noisy masks


class ToyPolicy(Policy):
    """Acts the same action at every voxel; its 'training' records how it was called."""

    def __init__(self, action: int, env: dict):
        self.action, self.config, self.name = int(action), {"env": env}, "toy"

    def act(self, obs, info=None, deterministic=True):
        return np.full((obs.shape[0], *obs.shape[2:]), self.action, dtype=np.int64)

    def save(self, path) -> Path:
        return save_checkpoint(path, "toy", {"action": self.action, "env": self.config["env"]}, {})


def toy_train(*, env_kwargs, seed, out, progress, updates=None, minutes=None, cpu_minutes=None, **options):
    pol = ToyPolicy(options.get("action", ACTION), {k: v for k, v in env_kwargs.items() if k != "device"})
    Path(out).mkdir(parents=True, exist_ok=True)
    pol.save(Path(out) / "checkpoint.pt")
    (Path(out) / "called.json").write_text(json.dumps({"seed": seed, "updates": updates, "minutes": minutes,
                                                       "cpu_minutes": cpu_minutes}))
    return pol


def toy_load(path, device="cpu"):
    ck = load_checkpoint(path, "toy")
    return ToyPolicy(ck["config"]["action"], ck["config"]["env"])


def toy_train_cli(args) -> Path:
    from agents.cli.envargs import env_kwargs

    toy_train(env_kwargs=env_kwargs(args), seed=args.seed, out=args.out, progress=False, updates=args.updates)
    return Path(args.out)


@pytest.fixture
def toy_agent():
    spec = registry.register_agent(registry.AgentSpec(
        name="toy", label="Toy agent", kind="toy", train=toy_train, load=toy_load, train_cli=toy_train_cli))
    yield spec
    registry.unregister_agent("toy")
    assert "toy" not in registry.agent_names()


def test_a_registered_agent_is_seen_by_train_evaluate_refine_and_benchmark(toy_agent, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--agent", "toy", "--updates", "3", "--seed", "7", "--patch-size", "12",
                 "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "called.json").read_text())["seed"] == 7

    # evaluate: recognised by the kind in its checkpoint; the env defaults to the one it trained on
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "2", "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["env"]["patch_size"] == [12] or summary["env"]["patch_size"] == 12
    assert summary["refined"]["dice"]["n"] == 2

    # the Python loader behind evaluate and refine
    pol, spec = registry.load_policy(run)
    assert spec.name == "toy" and pol.name == "Toy agent" and pol.action == ACTION

    # benchmark: trained from its registry entry, labelled in the leaderboard
    out = tmp_path / "bench"
    assert main(["benchmark", "--agents", "identity,toy", "--train-minutes", "0.5", "--episodes", "2",
                 "--patch-size", "12", "--max-steps", "2", "--overlays", "0", "--out", str(out),
                 "--no-progress"]) == 0
    board = (out / "leaderboard.csv").read_text()
    assert "Toy agent" in board and "identity" in board
    called = json.loads((out / "runs" / "toy" / "called.json").read_text())
    assert called["minutes"] == 0.5 and called["updates"] is None


def test_registry_refuses_duplicates_and_unknown_names(toy_agent):
    with pytest.raises(ValueError, match="already registered"):
        registry.register_agent(toy_agent)
    with pytest.raises(ValueError, match="kind 'toy' is already used"):
        registry.register_agent(registry.AgentSpec(name="toy2", label="t", kind="toy", train=toy_train,
                                                   load=toy_load, train_cli=toy_train_cli))
    with pytest.raises(ValueError, match="unknown agent 'nope'"):
        registry.get_agent("nope")


def test_built_in_agents_are_registered():
    assert {"va3c", "ppo", "a2c", "rllib-ppo"} <= set(registry.agent_names())
    assert registry.agent_names(benchmark=True) == ("va3c", "supervised", "voxel-ppo", "ppo", "a2c")
