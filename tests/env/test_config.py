"""``svl_env.EnvConfig``: the env's options, their JSON form, files written before it existed,
and the errors of bad options (those of the env, unchanged)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from svl_env import EnvConfig, PhantomSource, SVLDRLEnv, SVLDRLVectorEnv

FIXTURES = Path(__file__).parent / "fixtures" / "old_env_configs"


class Seg(torch.nn.Module):
    def forward(self, x):
        return x - 0.5


def _options() -> dict[str, inspect.Parameter]:
    params = inspect.signature(SVLDRLVectorEnv.__init__).parameters
    return {n: p for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n != "config"}


def test_fields_are_the_env_constructors_options_with_its_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(EnvConfig) if f.name != "data_options"}
    assert fields == {n: p.default for n, p in _options().items()}
    var_kw = [p for p in inspect.signature(SVLDRLVectorEnv.__init__).parameters.values() if p.kind == p.VAR_KEYWORD]
    assert [p.name for p in var_kw] == ["data_options"]
    assert EnvConfig().to_kwargs() == {}


# a non-default value of every option: an option added to the env needs one here (and a field)
SAMPLES = dict(data=PhantomSource(), patch_size=(8, 10, 12), noise="flip", noise_ratio=0.5, action_set="intensity",
               segmenter=Seg(), reward_target="annotation", initial_mask="annotation", max_steps=3,
               reward_weights={"w_cc": 0.5}, action_rewards=True, device=torch.device("cpu"), return_tensors=True,
               render_mode="rgb_array", autoreset_mode=AutoresetMode.SAME_STEP, max_episode_steps=4)
NEEDS = dict(action_set=dict(segmenter=Seg()))


@pytest.mark.parametrize("name", sorted(_options()))
def test_every_option_reaches_the_envs_config(name):
    assert set(SAMPLES) == set(_options())
    kw = {"patch_size": 8, **NEEDS.get(name, {}), name: SAMPLES[name]}
    env = SVLDRLVectorEnv(1, **kw)
    assert getattr(env.config, name) is SAMPLES[name]
    assert env.config == EnvConfig.from_kwargs(**kw)
    assert SVLDRLVectorEnv(1, config=env.config).config is env.config


def test_json_round_trip_rebuilds_the_same_env():
    cfg = EnvConfig(patch_size=(8, 10, 12), noise={"mt": 0.7, "markov:T=60": 0.3}, noise_ratio=0.5, max_steps=3,
                    reward_weights={"w_cc": 0.5, "w_tv": 0.2}, action_rewards=True,
                    autoreset_mode=AutoresetMode.SAME_STEP, data_options={"families": ["tubular", "hollow"]})
    text = json.dumps(cfg.to_json())
    back = EnvConfig.from_json(json.loads(text))
    assert back == cfg
    assert json.loads(text)["families"] == ["tubular", "hollow"] and json.loads(text)["patch_size"] == [8, 10, 12]
    a, b = SVLDRLVectorEnv(2, config=cfg), SVLDRLVectorEnv(2, config=back)
    np.testing.assert_array_equal(a.reset(seed=5)[0], b.reset(seed=5)[0])
    step = np.random.default_rng(0).integers(0, 4, size=a.action_space.shape)
    ra, rb = a.step(step), b.step(step)
    np.testing.assert_array_equal(ra[0], rb[0])
    np.testing.assert_array_equal(ra[1], rb[1])
    # the keyword form rebuilds it too, and only names what differs from the defaults
    assert EnvConfig.from_kwargs(**cfg.to_kwargs()) == cfg
    assert SVLDRLVectorEnv(1, **cfg.to_kwargs()).config == cfg
    assert EnvConfig(patch_size=16).to_kwargs() == {"patch_size": 16}


def test_to_json_of_values_without_a_json_form():
    cfg = EnvConfig(action_set="intensity", segmenter=Seg(), device=torch.device("cpu"), data=Path("/x/Task09"))
    with pytest.raises(ValueError, match="segmenter=Seg cannot be stored"):
        cfg.to_json()
    d = cfg.to_json(strict=False)  # a record: the module by its repr
    assert d["segmenter"] == "Seg()" and d["device"] == "cpu" and d["data"] == "/x/Task09"
    assert d["autoreset_mode"] == AutoresetMode.NEXT_STEP.value
    json.dumps(d)


@pytest.mark.parametrize("fixture, key", [("va3c.json", "env"), ("va3c_folder.json", "env"),
                                          ("ppo.json", "env_kwargs"), ("rllib.json", "env_kwargs")])
def test_config_json_written_before_envconfig_loads(fixture, key):
    # config.json files as the code before EnvConfig wrote them (svl-drl train, 1 update each)
    old = json.loads((FIXTURES / fixture).read_text())[key]
    cfg = EnvConfig.from_json(old)
    for k, v in old.items():
        got = cfg.data_options[k] if k in cfg.data_options else getattr(cfg, k)
        assert got == (tuple(v) if isinstance(v, list) else v), k
    assert set(cfg.to_json()) >= set(old)
    if cfg.data == "phantom":  # the same episodes as the env built from the old dict
        a, b = SVLDRLVectorEnv(2, config=cfg), SVLDRLVectorEnv(2, **old)
        np.testing.assert_array_equal(a.reset(seed=1)[0], b.reset(seed=1)[0])


def test_old_spellings_of_the_autoreset_mode_and_unknown_keys():
    # run logs str()-ed the enum; to_json writes its value
    assert EnvConfig.from_json({"autoreset_mode": "AutoresetMode.SAME_STEP"}).autoreset_mode == AutoresetMode.SAME_STEP
    assert EnvConfig.from_json({"autoreset_mode": "Disabled"}).autoreset_mode == AutoresetMode.DISABLED
    with pytest.raises(ValueError, match="not a valid AutoresetMode"):
        EnvConfig.from_json({"autoreset_mode": "sometimes"})
    with pytest.raises(ValueError, match=r"unknown env config key\(s\) \['nosie', 'zzz'\]"):
        EnvConfig.from_json({"patch_size": 8, "nosie": "mt", "zzz": 1})
    with pytest.raises(ValueError, match="JSON object"):
        EnvConfig.from_json([["patch_size", 8]])


# (options, message): the env's errors before EnvConfig, word for word
BAD = [
    (dict(device="gpu0"), "device 'gpu0' is not a torch device (expected e.g. cpu, cuda, cuda:1)"),
    (dict(patch_size=1), "patch_size must be an int or 3 ints >= 2, got 1"),
    (dict(patch_size=(8, 8)), "patch_size must be an int or 3 ints >= 2, got (8, 8)"),
    (dict(max_steps=0), "max_steps must be a positive int, got 0"),
    (dict(max_steps=2.5), "max_steps must be a positive int, got 2.5"),
    (dict(max_episode_steps=0), "max_steps must be a positive int, got 0"),
    (dict(action_set="x"), "unknown action_set 'x'; valid: ['label', 'intensity']"),
    (dict(action_set="intensity"), "action_set='intensity' needs a segmenter (a torch module: image -> logits)"),
    (dict(segmenter=5), "segmenter must be a callable torch module, got int"),
    (dict(initial_mask="x"), "initial_mask must be 'annotation' or 'segmenter', got 'x'"),
    (dict(initial_mask="segmenter"), "initial_mask='segmenter' needs a segmenter"),
    (dict(action_set="intensity", segmenter=Seg(), action_rewards=True),
     "action_rewards=True needs action_set='label' (the reward decomposes per voxel only there)"),
    (dict(reward_target="x"), "reward_target must be 'clean' or 'annotation', got 'x'"),
    (dict(reward_weights={"w_x": 1.0}),
     "unknown reward weight(s) ['w_x']; valid: ['w_cc', 'w_cont', 'w_dice', 'w_tv']"),
    (dict(noise="bogus"), "unknown noise protocol 'bogus'"),
    (dict(noise_ratio=2.0), "noise_ratio must be in [0, 1], got 2.0"),
    (dict(render_mode="human"), "render_mode must be one of ['rgb_array'] or None, got 'human'"),
    (dict(autoreset_mode="x"), "'x' is not a valid AutoresetMode"),
]


@pytest.mark.parametrize("kw, message", BAD, ids=[next(iter(kw)) + str(i) for i, (kw, _) in enumerate(BAD)])
def test_bad_options_give_the_envs_errors(kw, message):
    with pytest.raises(ValueError) as from_config:
        EnvConfig.from_kwargs(**{"patch_size": 8, **kw}).validate()
    with pytest.raises(ValueError) as from_env:
        SVLDRLVectorEnv(1, **{"patch_size": 8, **kw})
    assert str(from_config.value).startswith(message) and str(from_env.value) == str(from_config.value)


def test_data_errors_stay_the_envs():
    cfg = EnvConfig.from_kwargs(data="/nonexistent/folder", labels="noisy")
    assert cfg.data_options == {"labels": "noisy"}
    cfg.validate()  # no data is opened by validate
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        SVLDRLVectorEnv(1, config=cfg)
    with pytest.raises(ValueError, match=r"option\(s\) \['labels'\] do not apply to phantom data"):
        SVLDRLVectorEnv(1, config=cfg.replace(data="phantom"))


def test_derived_properties():
    cfg = EnvConfig(patch_size=[12, 10, 9], action_set="intensity", segmenter=Seg(), max_steps=5, max_episode_steps=3)
    assert cfg.patch_size == (12, 10, 9) and cfg.patch_shape == (12, 10, 9)
    assert EnvConfig(patch_size=np.int64(9)).patch_shape == (9, 9, 9)
    # an explicit max_steps wins over the alias (make_vec fills the alias from the registered spec)
    assert cfg.torch_device == torch.device("cpu") and cfg.episode_steps == 5
    assert cfg.replace(max_steps=None).episode_steps == 3 and EnvConfig().episode_steps == 5
    assert cfg.num_actions == 3 and EnvConfig().num_actions == 4 and cfg.num_channels == 6
    assert cfg.resolved_initial_mask == "segmenter" and EnvConfig().resolved_initial_mask == "annotation"
    env = SVLDRLVectorEnv(2, config=cfg)
    assert env.single_observation_space.shape == (cfg.num_channels, *cfg.patch_shape)
    assert len(env.action_names) == cfg.num_actions and env.max_steps == cfg.episode_steps


def test_config_or_keywords_and_the_single_env():
    cfg = EnvConfig(patch_size=8, noise="flip", max_steps=2)
    with pytest.raises(TypeError, match=r"not both .*\['max_steps'\]"):
        SVLDRLVectorEnv(1, config=cfg, max_steps=4)
    one = SVLDRLEnv(config=cfg.replace(autoreset_mode=AutoresetMode.SAME_STEP), render_mode="rgb_array")
    assert one.config == cfg.replace(autoreset_mode=AutoresetMode.DISABLED, render_mode="rgb_array")
    made = gym.make("SVLDRL-v0", config=cfg)
    obs, _ = made.reset(seed=3)
    np.testing.assert_array_equal(obs, SVLDRLEnv(patch_size=8, noise="flip", max_steps=2).reset(seed=3)[0])
    assert made.unwrapped.config.max_steps == 2
    vec = gym.make_vec("SVLDRL-v0", num_envs=2, vectorization_mode="vector_entry_point", config=cfg)
    assert vec.unwrapped.config == cfg
    # data options: added by name, replaced as a whole with data_options=
    c2 = cfg.replace(families=["blob"]).replace(modalities=["ct"])
    assert c2.data_options == {"families": ["blob"], "modalities": ["ct"]}
    assert c2.replace(data_options={}).data_options == {} and cfg.data_options == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_steps = 3
    with pytest.raises(TypeError, match="EnvConfig or a dict"):
        SVLDRLVectorEnv(1, config=["patch_size"])
    assert SVLDRLEnv(config={"patch_size": 8}).config.patch_size == 8


def test_a_va3c_checkpoint_holding_an_old_env_dict_resumes_and_loads(tmp_path):
    from agents.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from agents.eval.refine import load_policy
    from agents.va3c import Budget, VA3CRun

    old = {**json.loads((FIXTURES / "va3c.json").read_text())["env"], "patch_size": 8, "max_steps": 2}
    path = VA3CRun(old, budget=Budget(updates=1), config=dict(width=4, depth=1, num_envs=1)).save(tmp_path / "a.pt")
    ck = load_checkpoint(path)
    assert ck["config"]["env"] == EnvConfig.from_kwargs(**old).to_json()  # written in full now
    save_checkpoint(path, ck["kind"], {**ck["config"], "env": old}, ck["tensors"], ck["meta"])  # as before

    run = VA3CRun.resume(path)
    assert run.env == EnvConfig.from_json(old) and run.env.patch_shape == (8, 8, 8)
    run.run()
    assert run.update == 1
    _, env = load_policy(path)
    assert env.patch_size == 8 and env.episode_steps == 2
    save_checkpoint(path, ck["kind"], {**ck["config"], "env": {**old, "patch": 8}}, ck["tensors"], ck["meta"])
    with pytest.raises(CheckpointError, match=r"malformed training state .*unknown env config key\(s\) \['patch'\]"):
        VA3CRun.resume(path)
