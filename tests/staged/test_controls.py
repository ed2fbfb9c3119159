"""The controls that isolate the agents (issue 16): TriNet, self-training, and the benchmark's
noisy row with updates matched to svl-drl. Same tiny Decathlon folder as test_pipeline, budgets
of a few updates, a 4-channel U-Net, one thread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents.cli import main
from test_pipeline import FAST, SHAPES, _make_folder

TINY = {"patch": 16}
MODEL = {"width": 4}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    return _make_folder(tmp_path_factory.mktemp("controls"))


@pytest.fixture(scope="module")
def ts(folder):
    from agents.staged.data import load_training_set

    return load_training_set(folder[0], progress=False)


def _fast(updates: int) -> list[str]:
    return [a if a != "8" else str(updates) for a in FAST]


# -- TriNet


def _small_sets(loss: torch.Tensor, label: torch.Tensor, n_drop: int) -> set:
    """Indices not among the n_drop largest losses of their class (by hand, not small_loss_mask)."""
    flat_l, flat_y = loss.reshape(-1).tolist(), (label.reshape(-1) > 0.5).tolist()
    keep = set(range(len(flat_l)))
    for cls in (True, False):
        idx = sorted((i for i in range(len(flat_l)) if flat_y[i] == cls), key=lambda i: -flat_l[i])
        keep -= set(idx[:n_drop])
    return keep


def test_trinet_keeps_exactly_what_both_others_rank_small_loss():
    from agents.staged.methods.trinet import trinet_select

    label = torch.zeros(1, 1, 4, 4, 4)
    label[..., :1, :, :] = 1  # 16 foreground, 48 background voxels
    g = torch.Generator().manual_seed(0)
    losses = [torch.arange(64, dtype=torch.float32).view(1, 1, 4, 4, 4),  # A: the last voxels are the worst
              torch.arange(64, 0, -1, dtype=torch.float32).view(1, 1, 4, 4, 4),  # B: the first
              torch.randperm(64, generator=g).float().view(1, 1, 4, 4, 4)]  # C: a shuffle
    keep = trinet_select(losses, label, 0.25)  # 4 voxels (0.25 x |foreground|) per class per network
    small = [_small_sets(lo, label, 4) for lo in losses]
    for i in range(3):
        others = [small[j] for j in range(3) if j != i]
        got = set(torch.nonzero(keep[i].reshape(-1)).squeeze(1).tolist())
        assert got == others[0] & others[1], i
        assert set(torch.unique(keep[i]).tolist()) <= {0.0, 1.0}
    assert not keep[0].reshape(-1)[:4].any() and not keep[2].reshape(-1)[:4].any()  # B's worst foreground voxels
    # a network's own ranking plays no part: A's worst background voxel (63) is kept by A if B and C keep it
    assert (63 in small[1] and 63 in small[2]) == bool(keep[0].reshape(-1)[63])
    assert all(k.all() for k in trinet_select(losses, label, 0.0))  # nothing dropped before the ramp
    with pytest.raises(ValueError, match="three"):
        trinet_select(losses[:2], label, 0.1)


def test_trinet_trains_through_train_and_the_pipeline(folder, ts, tmp_path):
    from agents.common.budget import Budget
    from agents.staged.methods import METHODS, train

    assert "trinet" in METHODS
    r = train("trinet", ts, budget=Budget(updates=2), seed=0, config=TINY, model_config=MODEL, progress=False)
    assert r.updates == 2 and r.extra["networks"] == 3 and len(r.refined) == len(SHAPES)
    assert [e["stage"] for e in r.entries] == ["trinet"]
    data, clean = folder
    out = tmp_path / "trinet"
    assert main(["pipeline", "--data", str(data), "--out", str(out), "--method", "trinet",
                 "--eval-labels", str(clean), *_fast(2)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "trinet" and report["updates"] == 2 and report["networks"] == 3
    assert "network A" in report["refined_labels_from"] and "refined_labels" in report["eval"]
    assert len(list((out / "refined_labels").iterdir())) == len(SHAPES)
    assert (out / "model.pt").is_file()


# -- self-training


def test_self_training_output_is_the_models_accepted_predictions(ts):
    from agents.common.budget import Budget
    from agents.staged.harness import make_train_config, predict_training
    from agents.staged.methods import METHODS, train
    from agents.staged.methods.svl_drl import StagedRun, stage_plan

    assert METHODS["self-training"].stages is not None
    cfg = make_train_config(**TINY, rounds=2, accept="all")  # acceptance of everything
    r = train("self-training", ts, budget=Budget(updates=6), seed=0, config=cfg, model_config=MODEL,
              progress=False)
    try:
        assert r.updates == 6
        assert "model predictions" in r.extra["refined_labels_from"] and "self-training" in r.extra[
            "refined_labels_from"]
        assert not r.model.has_agents
        # svl-drl's stage plan and rounds at the same budget fractions
        plan = stage_plan(("warmup", "transition", "full"), cfg)
        assert r.extra["stage_plan"] == [{"stage": s, "start": a, "end": b} for s, a, b in plan]
        full = plan[-1]
        assert r.extra["refine_at_progress"] == pytest.approx([full[1] + (full[2] - full[1]) * k / 2 for k in (1, 2)])
        assert [x["round"] for x in r.extra["refinements"]] == [1, 2] and len(r.round_labels) == 2
        assert all(x["cases_accepted"] == len(SHAPES) for x in r.extra["refinements"])
        assert ts.refined and all((a == b).all() for a, b in zip(ts.current, r.round_labels[0]))  # round 1 -> labels
        # the output labels are the final model's thresholded predictions (everything accepted)
        pred = predict_training(r.model, ts, cfg, "cpu")
        assert all((a == b).all() for a, b in zip(r.refined, pred))
        assert StagedRun.refined_source != r.extra["refined_labels_from"]
    finally:
        ts.set_current(ts.given)
        ts.refined = False


def test_self_training_pipeline_writes_labels_and_report(folder, tmp_path):
    data, clean = folder
    out = tmp_path / "st"
    assert main(["pipeline", "--data", str(data), "--out", str(out), "--method", "self-training",
                 "--eval-labels", str(clean), *_fast(4)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "self-training" and report["updates"] == 4
    assert "model predictions" in report["refined_labels_from"]
    assert [x["round"] for x in report["refinements"]] == [1, 2]
    assert [x["round"] for x in report["eval"]["rounds"]] == [1, 2]
    assert len(list((out / "refined_labels").iterdir())) == len(SHAPES)


def test_zscore_acceptance_keeps_the_typical_case_and_takes_the_outlier():
    from agents.staged.label_refinement import accept_proposals

    labels, proposals, probs = [], [], []
    for i in range(8):
        lab = np.zeros((12, 12, 12), bool)
        lab[3:9, 3:9, 3:9] = True
        prop = lab.copy()
        prob = lab.astype(np.float32)
        if i == 0:  # the proposal and the model both say: much larger than annotated
            prop[1:11, 1:11, 1:11] = True
            prob = prop.astype(np.float32)
        else:
            prop[3, 3, 3 + i % 3] = False  # small, typical edits
        labels.append(lab)
        proposals.append(prop)
        probs.append(prob)
    out, info = accept_proposals(labels, proposals, probs, {"accept": "zscore", "accept_z": 1.0})
    assert info["accepted"] == [0] and (out[0] == proposals[0]).all()
    assert all((o == lab).all() for o, lab in zip(out[1:], labels[1:]))
    out, info = accept_proposals(labels, proposals, probs, {"accept": "zscore", "accept_z": 0.0})
    assert info["n_accepted"] == 8 and all((o == p).all() for o, p in zip(out, proposals))


# -- the benchmark's update-matched noisy row


def test_benchmark_rows_and_the_update_count_helper(tmp_path, benchmark_script):
    from agents.staged.methods import METHODS

    b = benchmark_script("staged_pipeline")
    row = "noisy (updates matched to svl-drl)"
    for m in ("trinet", "self-training", row):
        assert m in b.METHODS and m in b.DEFAULT_METHODS
    assert b.METHODS["trinet"][0] == ["--method", "trinet"] and b.METHODS["self-training"][0][1] in METHODS
    assert b.MATCHED[row] == "svl-drl" and b.METHODS[row][0] == ["--method", "noisy"]
    assert b.DEFAULT_METHODS.index("svl-drl") < b.DEFAULT_METHODS.index(row)
    run = tmp_path / "svl-drl" / "seed0"
    with pytest.raises(FileNotFoundError):
        b.run_updates(run)
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"method": "svl-drl", "updates": 417, "train_cpu_s": 240.0}))
    assert b.run_updates(run) == 417
    assert b.matched_budget(row, run) == ["--updates", "417"]
    with pytest.raises(ValueError):
        b.matched_budget("noisy", run)
    rows = [{"method": m, "runs": [{"seed": s, "test": {"dice": d + 0.01 * s}} for s in (0, 1)]}
            for m, d in (("svl-drl", 0.8), ("trinet", 0.7), ("self-training", 0.75), (row, 0.6))]
    text = "\n".join(b._paired_lines(rows))
    assert "- trinet: +0.1000" in text and "- self-training: +0.0500" in text and f"- {row}: +0.2000" in text
    text = "\n".join(b._paired_lines(rows, "self-training"))  # --reference: another row as the reference
    assert "self-training minus each method" in text and "- svl-drl: -0.0500" in text and "- trinet: +0.0500" in text
    for m in ("svl-drl (refit)", "self-training (refit)"):  # the refit rows share their schedule
        assert b.METHODS[m][0][-len(b.REFIT):] == b.REFIT
    for m in ("svl-drl (cross-fit)", "self-training (cross-fit)"):  # and so do the cross-fit rows
        assert b.METHODS[m][0][-len(b.CROSSFIT):] == b.CROSSFIT


def test_cli_help_names_every_method(capsys):
    from agents.cli.pipeline import METHOD_HELP
    from agents.staged.methods import METHODS

    assert set(METHOD_HELP) == set(METHODS)
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for m in METHODS:
        assert f"{m}:" in text


# -- Refit from fresh weights


@pytest.mark.parametrize("method", ["svl-drl", "self-training"])
def test_refit_reinit_restarts_weights_and_schedule(ts, method):
    """``refit_reinit``: Refit starts from new weights with its own learning-rate schedule, and
    trains on the last round's labels (the output labels)."""
    from agents.common.budget import Budget
    from agents.staged.harness import make_train_config
    from agents.staged.methods import train

    cfg = {**TINY, "rounds": 1, "refit_frac": 0.5, "refit_reinit": True, "intensity_every": 0}
    r = train(method, ts, budget=Budget(updates=12), seed=0, config=cfg, model_config=MODEL, progress=False)
    c = r.curves
    first = c["stage"].index("refit")
    assert c["stage"][first:] == ["refit"] * 6 and c["update"][first] == 6
    lr0 = make_train_config()["lr"]
    assert c["lr"][first] == pytest.approx(lr0) and c["lr"][first - 1] < lr0  # the schedule restarts
    assert [x["update"] for x in r.extra["refinements"]] == [6]
    # without reinit the same run continues the decayed schedule
    r2 = train(method, ts, budget=Budget(updates=12), seed=0, config={**cfg, "refit_reinit": False},
               model_config=MODEL, progress=False)
    assert r2.curves["lr"][first] < lr0
    assert not all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), r2.model.state_dict().values()))
