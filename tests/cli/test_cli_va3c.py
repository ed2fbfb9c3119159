"""``svl-drl train --agent va3c`` / ``svl-drl evaluate``: run folders, resume, reports, errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from agents.common.checkpoint import load_checkpoint, save_checkpoint
from agents.cli import main

TRAIN = ["train", "--agent", "va3c", "--num-envs", "2", "--patch-size", "16", "--max-steps", "2", "--no-progress",
         "--seed", "3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "va3c"
    assert main(TRAIN + ["--updates", "2", "--checkpoint-every", "1", "--out", str(out)]) == 0
    return out


def test_train_writes_run_folder(run_dir):
    assert (run_dir / "checkpoint.pt").is_file()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent"] == "va3c" and cfg["env"]["patch_size"] == 16 and cfg["seed"] == 3
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["update"]) for r in rows] == [0, 1]
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    ck = load_checkpoint(run_dir / "checkpoint.pt", "va3c")
    assert ck["meta"]["update"] == 2


def test_resume_continues_from_saved_step(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--agent", "va3c", "--resume", str(copy), "--updates", "3", "--no-progress"]) == 0
    assert load_checkpoint(copy / "checkpoint.pt", "va3c")["meta"]["update"] == 3
    rows = list(csv.DictReader(open(copy / "metrics.csv")))
    assert [int(r["update"]) for r in rows] == [0, 1, 2]


def test_resume_missing_run_exits_2(tmp_path, capsys):
    assert main(["train", "--agent", "va3c", "--resume", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err


def test_evaluate_writes_csv_and_summary(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--episodes", "3", "--seed", "11", "--out", str(out),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert len(rows) == 3 and {"dice", "dice_annotation", "hd95", "continuity"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"]["patch_size"] == 16 and summary["env"]["max_steps"] == 2  # from the checkpoint
    for key in ("refined", "annotation"):
        for m in ("dice", "iou", "hd95", "continuity"):
            assert {"mean", "ci95", "n"} <= set(summary[key][m])
    assert "Dice vs truth" in capsys.readouterr().out


def test_evaluate_refuses_other_kind(tmp_path, capsys):
    other = save_checkpoint(tmp_path / "x.pt", "heuristic", {}, {"model": {"w": torch.zeros(1)}})
    assert main(["evaluate", "--checkpoint", str(other), "--episodes", "1", "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kind 'heuristic'" in err[0]


def test_train_help_names_every_builtin_agent():
    from agents import registry
    from agents.cli import COMMANDS

    help_line = COMMANDS["train"][1]
    missing = [a for a in registry.agent_names() if a not in help_line]
    assert not missing, f"'svl-drl --help' train line omits {missing}"
