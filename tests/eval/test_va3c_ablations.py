"""benchmarks/va3c_ablations.py: its variants are valid options, a reference of another setting
is refused in one line, and a tiny run scores every arm against the supervised control."""

from __future__ import annotations

import json

import pytest


def test_every_variant_is_a_valid_va3c_and_env_configuration(benchmark_script):
    from agents.va3c.config import make_config
    from svl_env import EnvConfig

    ab = benchmark_script("va3c_ablations")
    for name, (_, va3c, env) in ab.VARIANTS.items():
        cfg = make_config(**{**ab.BASE_CONFIG, **va3c})
        assert all(cfg[k] == v for k, v in va3c.items()), name
        EnvConfig.from_any({**ab.ENV, **env}).validate()
    assert set(ab.DEFAULT_VARIANTS) <= set(ab.VARIANTS)


def test_a_reference_of_another_setting_is_refused(benchmark_script, tmp_path, capsys):
    ab = benchmark_script("va3c_ablations")
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "benchmark.json").write_text(json.dumps({"episodes": 8, "seed": 0, "train_seed": 100000,
                                                    "env_kwargs": {}, "training": {}}))
    with pytest.raises(SystemExit) as e:
        ab.main(["--out", str(tmp_path / "o"), "--reference", str(ref)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "is not the same setting" in err and "episodes/seed 8/0 (here 32/0)" in err
    assert not (tmp_path / "o").exists()  # nothing trained


def test_a_tiny_run_scores_each_arm_against_supervised(benchmark_script, tmp_path):
    ab = benchmark_script("va3c_ablations")
    out = tmp_path / "abl"
    assert ab.main(["--out", str(out), "--variants", "dice-reward", "--seeds", "1", "--cpu-minutes", "0.01",
                    "--episodes", "2", "--train-jobs", "1", "--bootstrap-reps", "20", "--no-progress"]) == 0
    cfg = json.loads((out / "runs" / "dice-reward" / "config.json").read_text())
    assert "'w_cont': 0.0" in str(cfg) or '"w_cont": 0.0' in json.dumps(cfg)
    stats = json.loads((out / "ablations.json").read_text())["stats"]
    controls = {r["policy"]: r["control"] for r in stats}
    sup = ab.SUPERVISED
    assert controls == {"vA3C [dice-reward]": sup, ab.VA3C: sup, sup: "identity", "identity": ""}
    assert "vA3C [dice-reward]" in (out / "ablations.md").read_text()
