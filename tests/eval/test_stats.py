"""rliable statistics of the benchmark (agents/eval/stats.py) on synthetic score matrices."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from agents.eval import stats as ST
from agents.eval.episodes import PER_CASE_FIELDS

REPS = 100  # enough for the CI checks below; the benchmark's default is 2000


def _scores(seed=0):
    rng = np.random.default_rng(seed)
    return {"identity": rng.uniform(0.4, 0.6, (1, 8)),
            "good": rng.uniform(0.85, 0.95, (3, 8)),       # clearly better than identity on every episode
            "noisy": rng.uniform(0.0, 1.0, (2, 8))}


def test_iqm_mean_and_improvement_against_known_values():
    sc = _scores()
    sc["same"] = sc["identity"].copy()
    out = ST.compute_stats(sc, {"good": "identity"}, reps=REPS)
    rows = {r["policy"]: r for r in out}
    for p, x in sc.items():
        r = rows[p]
        # IQM = the 25 %-trimmed mean of all runs x episodes (rliable's aggregate_iqm)
        assert r["iqm"] == pytest.approx(sps.trim_mean(x, 0.25, axis=None))
        assert r["mean"] == pytest.approx(x.mean())
        assert (r["runs"], r["episodes"]) == x.shape
        assert r["iqm_ci_low"] <= r["iqm"] <= r["iqm_ci_high"] and r["iqm_ci_low"] < r["iqm_ci_high"]
        assert r["mean_ci_low"] <= r["mean"] <= r["mean_ci_high"]
    assert rows["good"]["control"] == "identity" and rows["good"]["p_improvement"] > 0.9
    assert rows["good"]["p_ci_low"] <= rows["good"]["p_improvement"] <= rows["good"]["p_ci_high"]
    # the same scores as the control: no improvement either way; one run each -> no CI to resample
    assert rows["same"]["p_improvement"] == pytest.approx(0.5) and math.isnan(rows["same"]["p_ci_low"])
    # identity is the reference: no control of its own
    assert rows["identity"]["control"] == "" and math.isnan(rows["identity"]["p_improvement"])
    assert [r["policy"] for r in out][0] == "good"  # best IQM first


def test_control_fallback_reproducibility_and_global_rng():
    sc = _scores()
    del sc["noisy"]
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    a = ST.compute_stats(sc, {"good": "supervised"}, reps=REPS)
    assert np.random.random() == before  # NumPy's global generator is left as it was
    b = ST.compute_stats(sc, {"good": "supervised"}, reps=REPS)
    assert json.dumps(a) == json.dumps(b)  # seeded bootstraps: the same intervals every time (NaN included)
    good = {r["policy"]: r for r in a}["good"]
    assert good["control"] == "identity" and "supervised not in this run" in good["control_note"]
    # a policy's intervals do not depend on the other policies of the run
    alone = ST.compute_stats({"good": sc["good"]}, reps=REPS)[0]
    assert alone["iqm_ci_low"] == good["iqm_ci_low"] and alone["iqm_ci_high"] == good["iqm_ci_high"]
    assert alone["control"] == "" and "identity not in this run" in alone["control_note"]
    with pytest.raises(ValueError, match="reps"):
        ST.compute_stats(sc, reps=0)


def test_profile_matches_rliable_score_distribution():
    from rliable import library as rly

    x = np.random.default_rng(1).random((3, 7))
    assert np.allclose(ST._fraction_above(x, ST.TAUS), rly.score_distributions(x, ST.TAUS))
    prof, ci = ST.performance_profiles({"a": x}, reps=REPS)
    assert prof["a"].shape == ST.TAUS.shape and ci["a"].shape == (2, ST.TAUS.size)
    assert prof["a"][0] == 1.0 and prof["a"][-1] == 0.0 and np.all(np.diff(prof["a"]) <= 0)
    assert np.all(ci["a"][0] <= prof["a"] + 1e-12) and np.all(prof["a"] <= ci["a"][1] + 1e-12)


def _record(policy, run, ep, dice):
    r = {k: 0.0 for k in PER_CASE_FIELDS}
    r.update(policy=policy, run=run, episode=ep, case=f"c{ep}", corrupted=True, n_components=1, dice=dice)
    return r


def test_score_matrices_and_files(tmp_path):
    from agents.eval.episodes import write_per_case_csv

    recs = [_record("identity", 0, e, 0.5 + 0.01 * e) for e in range(6)]
    recs += [_record("agent", k, e, 0.8 + 0.01 * e - 0.05 * k) for k in (0, 1) for e in range(6)]
    m = ST.score_matrices(recs)
    assert m["agent"].shape == (2, 6) and m["identity"].shape == (1, 6)
    assert m["agent"][1, 2] == pytest.approx(0.77)
    path = write_per_case_csv(recs, tmp_path / "per_case.csv")
    res = ST.write_stats(path, tmp_path / "out", reps=REPS)
    with open(res["stats_csv"]) as fh:
        rows = {r["policy"]: r for r in csv.DictReader(fh)}
    assert list(rows["agent"]) == list(ST.STATS_FIELDS)
    assert rows["agent"]["runs"] == "2" and rows["identity"]["runs"] == "1"
    assert float(rows["agent"]["p_improvement"]) == 1.0 and rows["agent"]["control"] == "identity"
    md = res["stats_md"].read_text()
    assert "| agent | 2 | 6 |" in md and "IQM" in md
    assert res["profile_png"].stat().st_size > 5000
    with pytest.raises(ValueError, match="same episodes"):
        ST.score_matrices(recs[:-1])  # run 1 of agent misses episode 5
