"""The plain-U-Net control as a row of benchmarks/staged_pipeline.py (issue 16): plain_unet.py's
CPU budget and report.json, and the row end to end on a tiny phantom set (16^3 voxels, 4 training
and 2 test cases, 0.01 CPU-minutes per run, one thread)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("monai")


def _cube_set(pu, n=2, side=12):
    g = np.random.default_rng(0)
    imgs, labs = [], []
    for _ in range(n):
        lab = np.zeros((side,) * 3, bool)
        lab[3:9, 2:8, 4:10] = True
        imgs.append(pu.zscore(lab + 0.3 * g.standard_normal(lab.shape)))
        labs.append(lab)
    return imgs, labs


def test_cpu_budget_ends_training_before_a_huge_step_count(benchmark_script):
    import torch

    torch.set_num_threads(1)
    pu = benchmark_script("plain_unet")
    imgs, labs = _cube_set(pu)
    kw = {"seed": 0, "batch": 1, "patch": 8, "channels": (4, 8)}
    huge = 10**9
    _, cpu_s, updates = pu.train_plain_unet(imgs, labs, steps=huge, cpu_minutes=0.002, **kw)
    assert 0 < updates < huge and math.isfinite(cpu_s)
    _, _, updates = pu.train_plain_unet(imgs, labs, steps=3, cpu_minutes=60.0, **kw)  # the steps come first
    assert updates == 3
    _, _, updates = pu.train_plain_unet(imgs, labs, steps=None, cpu_minutes=0.002, **kw)  # no step limit
    assert 0 < updates < huge
    with pytest.raises(ValueError, match="never ends"):
        pu.train_plain_unet(imgs, labs, steps=None, cpu_minutes=None, **kw)


def test_budget_flags_and_out_needs_one_seed(tmp_path, monkeypatch, benchmark_script):
    pu = benchmark_script("plain_unet")
    seen = []

    def fake_run(data, **kw):  # no training: only the budget main passes on
        seen.append({k: kw[k] for k in ("steps", "cpu_minutes", "out")})
        return {"seed": 0, "steps": 1, "cpu_min": 0.0, "test_dice": None, "train_pred_dice": None}

    monkeypatch.setattr(pu, "run", fake_run)
    base = ["--data", str(tmp_path)]
    for extra, want in (([], (300, None)), (["--cpu-minutes", "2"], (None, 2.0)),
                        (["--cpu-minutes", "2", "--steps", "5"], (5, 2.0)), (["--steps", "7"], (7, None))):
        assert pu.main(base + extra) == 0
        assert (seen[-1]["steps"], seen[-1]["cpu_minutes"]) == want, extra
    assert pu.main(base + ["--out", str(tmp_path / "r")]) == 0 and seen[-1]["out"] == str(tmp_path / "r")
    for bad in (["--out", str(tmp_path / "r"), "--seeds", "0,1"], ["--cpu-minutes", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            pu.main(base + bad)
        assert exc.value.code == 2


def test_plain_unet_row_end_to_end_and_reuse(tmp_path, benchmark_script, capsys, monkeypatch):
    b = benchmark_script("staged_pipeline")
    assert b.PLAIN_UNET in b.ALL_METHODS and b.PLAIN_UNET not in b.DEFAULT_METHODS
    work, out = tmp_path / "work", tmp_path / "res" / "table.md"
    args = ["--methods", f"noisy,{b.PLAIN_UNET}", "--train", "4", "--size", "16,16", "--run-seeds", "0",
            "--cpu-minutes", "0.01", "--jobs", "2", "--workdir", str(work), "--out", str(out), "--stats-reps", "20"]
    assert b.main(args + ["--test", "2"]) == 0
    report_path = work / "runs" / "plain_U-Net" / "seed0" / "report.json"
    rep = json.loads(report_path.read_text())
    assert rep["method"] == b.PLAIN_UNET and rep["updates"] > 0 and rep["train_cpu_s"] > 0
    assert rep["budget"] == {"steps": None, "cpu_minutes": 0.01}
    assert rep["config"]["channels"] == [16, 32, 64] and rep["config"]["res_units"] == b.PLAIN_UNET_RES_UNITS
    cases = ["phantom_ts_000", "phantom_ts_001"]
    assert rep["test"]["cases"] == cases and len(rep["test"]["per_case"]["dice"]) == 2
    assert rep["eval"]["model_on_training_images"]["dice"] == rep["eval"]["refined_labels"]["dice"]

    def rows():
        res = json.loads(out.with_suffix(".json").read_text())
        return {r["method"]: r for r in res["rows"]}, {s["method"]: s for s in res["stats"]}

    by, stats = rows()
    plain, noisy = by[b.PLAIN_UNET], by["noisy"]
    assert not plain.get("failed") and not noisy.get("failed")
    (run,) = plain["runs"]
    assert run["test_cases"] == noisy["runs"][0]["test_cases"] == cases  # the same columns as every other row
    assert run["test_per_case_dice"] == rep["test"]["per_case"]["dice"]
    assert all(0.0 <= d <= 1.0 for d in run["test_per_case_dice"])
    assert run["updates"] == rep["updates"] > 0 and run["test"]["dice"] == pytest.approx(rep["test"]["dice"])
    assert run["model_train_dice"] == rep["eval"]["model_on_training_images"]["dice"]
    assert stats[b.PLAIN_UNET]["test_cases"] == stats["noisy"]["test_cases"] == 2
    assert f"| {b.PLAIN_UNET} |" in out.read_text()

    # --reuse: nothing retrained, the stored test scores read back
    mtimes = {p: p.stat().st_mtime_ns for p in (report_path, work / "runs" / "noisy" / "seed0" / "model.pt")}
    capsys.readouterr()
    assert b.main(args + ["--test", "2", "--reuse"]) == 0
    assert "training 0 run(s)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert rows()[0][b.PLAIN_UNET]["runs"][0]["test_per_case_dice"] == run["test_per_case_dice"]

    # --reuse with another --test: the noisy model is re-scored, the plain U-Net (scores stored) retrained
    assert b.main(args + ["--test", "3", "--reuse"]) == 0
    assert "training 1 run(s)" in capsys.readouterr().out
    noisy_pt = work / "runs" / "noisy" / "seed0" / "model.pt"
    assert noisy_pt.stat().st_mtime_ns == mtimes[noisy_pt]
    by, stats = rows()
    cases3 = cases + ["phantom_ts_002"]
    assert by[b.PLAIN_UNET]["runs"][0]["test_cases"] == by["noisy"]["runs"][0]["test_cases"] == cases3
    assert len(by[b.PLAIN_UNET]["runs"][0]["test_per_case_dice"]) == 3
    assert stats[b.PLAIN_UNET]["test_cases"] == 3

    # the staged rows' test scores are cached next to the model: the same model, cases and flips
    # read back without predicting; another flip count predicts again
    import agents.staged.checkpoint as ckpt

    noisy_dir = work / "runs" / "noisy" / "seed0"

    def cached():  # (key, the flip counts scored)
        stored = json.loads((noisy_dir / b.TEST_SCORES).read_text())
        return stored["key"], [int(f) for f in stored["scores"]]

    key1, flips = cached()
    assert flips == [1] and key1["cases"] == cases3

    def no_load(*a, **k):
        raise AssertionError("re-predicted a cached run")

    monkeypatch.setattr(ckpt, "load_model", no_load)
    got = b._test_scores(noisy_dir, work / "data", work / "clean_labelsTs")
    monkeypatch.undo()
    assert got["per_case"]["dice"] == by["noisy"]["runs"][0]["test_per_case_dice"]
    (noisy_dir / b.TEST_SCORES).write_text("{truncated")  # an unreadable cache is scored again
    again = b._test_scores(noisy_dir, work / "data", work / "clean_labelsTs")
    assert again["per_case"]["dice"] == pytest.approx(got["per_case"]["dice"])
    assert cached() == (key1, [1])

    # --test-flips 2: the noisy model is re-scored from its model.pt, the plain U-Net retrained
    assert b.main(args + ["--test", "3", "--reuse", "--test-flips", "2"]) == 0
    assert "training 1 run(s)" in capsys.readouterr().out
    assert noisy_pt.stat().st_mtime_ns == mtimes[noisy_pt]
    assert cached() == (key1, [1, 2])  # each flip count keeps its scores
    monkeypatch.setattr(ckpt, "load_model", no_load)
    cached1 = b._test_scores(noisy_dir, work / "data", work / "clean_labelsTs", flips=1)
    assert cached1["per_case"]["dice"] == pytest.approx(got["per_case"]["dice"])
    monkeypatch.undo()
    assert json.loads(report_path.read_text())["test_flips"] == 2
    assert rows()[0]["noisy"]["runs"][0]["test_cases"] == cases3
    assert "--test-flips 2`" in out.read_text()  # the table's command reproduces it
