"""``svl-drl benchmark --quick`` / ``--preset full``: what each preset hands to ``benchmark.run``
(without training anything), and that explicit options win."""

from __future__ import annotations

import pytest

from agents.cli import main
from agents.eval import benchmark as B


@pytest.fixture
def captured(monkeypatch, tmp_path):
    seen = {}

    def fake_run(custom, **kw):
        seen.update(kw)
        md = tmp_path / "leaderboard.md"
        md.write_text("lb\n")
        return {"leaderboard_md": md, "stats_md": md, "out": tmp_path}

    monkeypatch.setattr(B, "run", fake_run)
    return seen


def test_full_preset_trains_five_seeds_of_the_learned_agents_and_their_warm_starts(captured, tmp_path):
    assert main(["benchmark", "--preset", "full", "--out", str(tmp_path), "--no-progress"]) == 0
    assert captured["seeds"] == B.FULL["seeds"] >= 5
    assert captured["stats_reps"] == B.FULL["bootstrap_reps"]
    # the supervised runs from scratch are the checkpoints of the warm-start rows, seed by seed
    assert captured["track"] == "both" and captured["clock"] == "cpu"
    assert captured["warm_minutes"] == B.FULL["warm_minutes"] == 1.5
    agents = captured["agents"].split(",")
    assert {"va3c", "supervised", "voxel-ppo", "ppo", "identity"} <= set(agents)
    assert captured["train_minutes"] == B.FULL["train_minutes"]


def test_quick_preset_runs_both_tracks_with_the_default_agents(captured, tmp_path):
    assert main(["benchmark", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    assert captured["track"] == "both" and captured["seeds"] == 1
    assert captured["warm_minutes"] == B.QUICK["warm_minutes"]
    assert captured["agents"].split(",") == list(B.DEFAULT_AGENTS)
    assert {"supervised", "voxel-ppo"} <= set(B.DEFAULT_AGENTS)


def test_explicit_options_override_the_preset(captured, tmp_path):
    assert main(["benchmark", "--preset", "full", "--seeds", "2", "--agents", "identity,va3c",
                 "--bootstrap-reps", "50", "--out", str(tmp_path), "--no-progress"]) == 0
    assert captured["seeds"] == 2 and captured["stats_reps"] == 50 and captured["agents"] == "identity,va3c"


def test_quick_and_full_together_is_refused(captured, tmp_path, capsys):
    assert main(["benchmark", "--quick", "--preset", "full", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quick" in err[0]
