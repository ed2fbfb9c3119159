"""benchmarks/staged_pipeline.py's rliable statistics over run seeds (agents/eval/stats.py), on fake
per-case scores: no training, no data."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

REPS = 50  # enough for these checks; the benchmark's default is 2000
CASES = [f"phantom_ts_{i:03d}" for i in range(4)]


def _run(seed, dice, cases=CASES):
    return {"seed": seed, "test": {"dice": float(np.mean(dice))}, "test_per_case_dice": list(map(float, dice)),
            "test_cases": list(cases)}


def _rows(seed=0):
    """3 methods x 2 run seeds x 4 test cases; svl-drl above both others on every case and run."""
    g = np.random.default_rng(seed)
    base = {"svl-drl": (0.85, 0.95), "noisy": (0.5, 0.7), "coteaching": (0.6, 0.8)}
    return [{"method": m, "runs": [_run(sd, g.uniform(lo, hi, 4)) for sd in (0, 1)]} for m, (lo, hi) in base.items()]


def test_matrices_stats_and_improvement(benchmark_script):
    b = benchmark_script("staged_pipeline")
    rows = _rows()
    res = b.rliable_stats(rows, reps=REPS)
    assert set(res["scores"]) == {"svl-drl", "noisy", "coteaching"} and res["cases"] == CASES
    for r in rows:
        m = res["scores"][r["method"]]
        assert m.shape == (2, 4)
        assert np.allclose(m, [run["test_per_case_dice"] for run in r["runs"]])
    by = {r["method"]: r for r in res["rows"]}
    assert [r["method"] for r in res["rows"]][0] == "svl-drl"  # best IQM first
    for m, r in by.items():
        assert (r["runs"], r["test_cases"]) == (2, 4)
        assert 0.0 <= r["iqm_ci_low"] <= r["iqm"] <= r["iqm_ci_high"] <= 1.0
        assert r["mean"] == pytest.approx(res["scores"][m].mean())
    assert math.isnan(by["svl-drl"]["p_reference_better"])  # no comparison with itself
    for m in ("noisy", "coteaching"):  # svl-drl better on every case and run
        assert by[m]["p_reference_better"] == 1.0 and by[m]["p_ci_low"] == 1.0
    assert res["notes"] == []
    # the other direction: noisy's runs above svl-drl's everywhere -> 0
    rows[1]["runs"] = [_run(sd, np.full(4, 0.99)) for sd in (0, 1)]
    assert {r["method"]: r for r in b.rliable_stats(rows, reps=REPS)["rows"]}["noisy"]["p_reference_better"] == 0.0
    # another reference: the rows name it, and P(noisy > svl-drl) = 1 with noisy now above everywhere
    by = {r["method"]: r for r in b.rliable_stats(rows, reps=REPS, reference="noisy")["rows"]}
    assert {r["reference"] for r in by.values()} == {"noisy"} and math.isnan(by["noisy"]["p_reference_better"])
    assert by["svl-drl"]["p_reference_better"] == 1.0


def test_case_order_failed_runs_and_old_json(benchmark_script):
    b = benchmark_script("staged_pipeline")
    rows = _rows()
    # a run that lists the test cases in another order lines up by name
    run = rows[1]["runs"][1]
    run["test_cases"], run["test_per_case_dice"] = run["test_cases"][::-1], run["test_per_case_dice"][::-1]
    rows[2]["runs"].append({"seed": 2, "test": {"dice": 0.5}})  # an old JSON's run: no per-case Dice
    rows.append({"method": "trinet", "failed": True, "log": "x.log", "runs": [], "failed_seeds": [0, 1]})
    rows.append({"method": "self-training", "failed": True, "log": "y.log",  # one of two seeds failed
                 "runs": [_run(0, [0.7] * 4)], "failed_seeds": [1]})
    scores, cases, notes = b.dice_matrices(rows)
    assert cases == CASES and scores["noisy"].shape == (2, 4)
    assert np.allclose(scores["noisy"][1], _rows()[1]["runs"][1]["test_per_case_dice"])
    assert scores["coteaching"].shape == (2, 4) and "trinet" not in scores
    assert scores["self-training"].shape == (1, 4)
    text = "\n".join(notes)
    assert "coteaching, seed 2: no per-case" in text and "trinet: run seed(s) 0, 1 failed" in text
    assert "self-training: run seed(s) 1 failed" in text and "kept" in text
    # a whole old JSON (no per-case values at all): no statistics, no crash
    old = [{"method": r["method"], "runs": [{k: v for k, v in run.items() if not k.startswith("test_")}
                                            for run in r["runs"]]} for r in _rows()]
    res = b.rliable_stats(old, reps=REPS)
    assert res["rows"] == [] and len(res["notes"]) == 6
    assert "no per-case" in "\n".join(b.stats_markdown(res))


def test_stats_files_and_stats_from_json(tmp_path, benchmark_script):
    b = benchmark_script("staged_pipeline")
    js = tmp_path / "bench.json"
    js.write_text(json.dumps({"rows": _rows()}))
    out = tmp_path / "res" / "bench.md"
    assert b.main(["--stats-from", str(js), "--out", str(out), "--stats-reps", str(REPS)]) == 0
    md = (tmp_path / "res" / "bench_stats.md").read_text()
    assert "P(svl-drl > method)" in md and "| noisy | 2 | 4 |" in md
    with open(tmp_path / "res" / "bench_stats.csv") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert list(rows["noisy"]) == list(b.STATS_FIELDS) and float(rows["noisy"]["p_reference_better"]) == 1.0
    assert rows["noisy"]["reference"] == "svl-drl"
    assert (tmp_path / "res" / "bench_performance_profile.png").stat().st_size > 5000
