"""A noise protocol added by one ``register_noise`` call is seen by parsing, mixtures, error
messages, the derived tables and ``gym.make(..., noise=...)``; protocol objects are checked."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import svl_env  # noqa: F401  (registers SVLDRL-v0)
from svl_env import SVLDRLVectorEnv
from svl_env import noise as N
from svl_env.noise import NoiseProtocol, Param, parse_noise, register_noise, unregister_noise


def _toy_apply(truth: torch.Tensor, keys: torch.Tensor, p: dict) -> torch.Tensor:
    """Flips the first ``k`` voxels (C order) of every row: a known set, whatever the keys."""
    out = truth.clone()
    flat = out.view(out.shape[0], -1)
    flat[:, : p["k"]] ^= True
    return out


def _known(shape, k):
    m = torch.zeros(shape, dtype=torch.bool)
    m.view(-1)[:k] = True
    return m


TOY = NoiseProtocol("toy", _toy_apply, {"k": Param("int", 3, 1, 4096, "voxels flipped")},
                    presets={"many": {"k": 100}}, dice_range=(0.0, 1.0), doc="test protocol")


@pytest.fixture
def toy():
    register_noise(TOY)
    try:
        yield TOY
    finally:
        unregister_noise("toy")
    assert "toy" not in N.PROTOCOLS


def test_toy_is_parsed_and_listed(toy):
    assert N.PROTOCOLS[-1] == "toy" and N.DEFAULT_PARAMS["toy"] == {"k": 3}
    assert N.PRESETS["toy"] == {"default": {"k": 3}, "many": {"k": 100}} and "toy" in N.DICE_AT_DEFAULTS
    m = parse_noise("toy:k=7")
    assert m.components == (("toy", {"k": 7}),) and parse_noise(m.name) == m
    assert parse_noise("toy:preset=many").components[0][1] == {"k": 100}
    with pytest.raises(ValueError, match="'toy'.*'k'.*int in \\[1, 4096\\]"):
        parse_noise("toy:k=0")
    with pytest.raises(ValueError, match="valid: none, mt, sp, markov, flip, toy"):
        parse_noise("gauss")
    assert "toy" in N.registry.protocol_table()


def test_toy_through_gym_make(toy):
    env = gym.make("SVLDRL-v0", patch_size=16, noise="toy:k=10")
    env.reset(seed=3)
    st = env.unwrapped.state_tensors()
    flipped = (st["annotation"][0] > 0.5) ^ (st["truth"][0] > 0.5)
    assert torch.equal(flipped, _known((16, 16, 16), 10))
    env.close()


def test_toy_in_a_mixture(toy):
    env = SVLDRLVectorEnv(12, patch_size=16, noise="toy:k=10+mt")
    env.reset(seed=5)
    st = env.state_tensors()
    truth, ann, keys = st["truth"] > 0.5, st["annotation"] > 0.5, st["keys"]
    toy_rows = ((ann ^ truth) == _known((16, 16, 16), 10)).flatten(1).all(1)
    mt_alone, _ = parse_noise("mt")(truth, keys)
    assert 0 < int(toy_rows.sum()) < 12, toy_rows  # both protocols drawn
    assert torch.equal(ann[~toy_rows], mt_alone[~toy_rows])  # the other rows: exactly mt's annotation
    env.close()


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_noise(N.get_noise("mt"))
    with pytest.raises(ValueError, match="built in"):
        unregister_noise("mt")
    with pytest.raises(ValueError, match="rng tag 11 is used by mt"):
        register_noise(NoiseProtocol("clash", _toy_apply, tag=11))
    with pytest.raises(ValueError, match="lower-case identifier"):
        NoiseProtocol("Bad+name", _toy_apply)
    with pytest.raises(ValueError, match="needs an apply"):
        NoiseProtocol("noop", None)
    with pytest.raises(ValueError, match="'k'"):  # a default outside its range
        NoiseProtocol("toy2", _toy_apply, {"k": Param("int", 0, 1, 9)})
    with pytest.raises(ValueError, match="unknown"):
        NoiseProtocol("toy2", _toy_apply, {"k": Param("int", 1, 1, 9)}, presets={"x": {"j": 2}})
    assert "clash" not in N.PROTOCOLS and "toy2" not in N.PROTOCOLS
