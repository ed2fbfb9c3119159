"""The staged SVL-DRL pipeline (agents.staged, ``svl-drl pipeline`` / ``svl-drl segment``).

Tiny Decathlon folders written with nibabel (16..20 voxels per side, anisotropic rotated
affines, different sizes), budgets in updates, a 4-channel U-Net: the whole file runs in
well under a minute on 2 cores. No timing assertions.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from agents.common.checkpoint import CheckpointError, save_checkpoint
from agents.cli import main

SHAPES = [(18, 20, 16), (20, 17, 19), (16, 16, 16), (19, 18, 20)]
ODD = (19, 23, 17)  # a "97x115x93"-like odd shape, small


def _affine(spacing=(0.8, 0.9, 2.0)):
    a = np.deg2rad(15.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = (-30.0, 12.0, 40.0)
    return aff


def _ball(shape, r_frac=0.3, shift=0):
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [s / 2 + shift for s in shape]
    r = r_frac * min(shape)
    return ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < r ** 2


def _write(path: Path, data, dtype, aff, descrip=b"svl-drl test"):
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), aff)
    img.set_data_dtype(dtype)
    img.header["descrip"] = descrip
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _make_folder(root: Path) -> tuple[Path, Path]:
    """root/data (imagesTr, noisy labelsTr, imagesTs) and root/clean (clean labels)."""
    rng = np.random.default_rng(0)
    for i, shape in enumerate(SHAPES):
        aff = _affine((0.8 + 0.1 * i, 0.9, 2.0))
        truth = _ball(shape)
        img = np.where(truth, 300.0, 80.0) + rng.normal(0, 20, shape)
        noisy = _ball(shape, 0.38) if i % 2 else truth  # half the cases dilated
        _write(root / "data" / "imagesTr" / f"case{i}_0000.nii.gz", img, np.int16, aff)
        _write(root / "data" / "labelsTr" / f"case{i}.nii.gz", noisy, np.uint8, aff, b"noisy label")
        _write(root / "clean" / f"case{i}.nii.gz", truth, np.uint8, aff)
    aff = _affine((1.1, 0.7, 1.6))
    img = np.where(_ball(ODD), 300.0, 80.0) + rng.normal(0, 20, ODD)
    _write(root / "data" / "imagesTs" / "new_0000.nii.gz", img, np.int16, aff, b"new image")
    return root / "data", root / "clean"


FAST = ["--updates", "8", "--patch", "16", "--width", "4", "--rounds", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def svl_run(folder, tmp_path_factory):
    """An svl-drl run whose clean-label folder raises on read until the outputs are written."""
    data, clean = folder
    out = tmp_path_factory.mktemp("out") / "svl"
    reads = {"during_training": [], "after": []}
    real_load = nib.load

    def guarded_load(filename, *args, **kwargs):
        p = Path(str(filename)).resolve()
        if clean.resolve() in p.parents:
            if not (out / "model.pt").exists() or not (out / "refined_labels").is_dir():
                reads["during_training"].append(str(p))
                raise PermissionError(f"clean label opened during training: {p}")
            reads["after"].append(str(p))
        return real_load(filename, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nib, "load", guarded_load)
        # intensity agents on (off by default) so that their episodes are under the same guard
        rc = main(["pipeline", "--data", str(data), "--out", str(out), "--eval-labels", str(clean), "--seed", "1",
                   "--intensity-every", "2", *FAST])
    return {"rc": rc, "out": out, "reads": reads, "data": data, "clean": clean}


def test_clean_labels_are_never_opened_during_training(svl_run):
    assert svl_run["rc"] == 0
    assert svl_run["reads"]["during_training"] == []
    assert len(svl_run["reads"]["after"]) == len(SHAPES)  # --eval-labels read once, after training
    report = json.loads((svl_run["out"] / "report.json").read_text())
    ev = report["eval"]
    for key in ("given_labels", "refined_labels", "model_on_training_images"):
        assert {"dice", "iou", "hd95", "asd"} <= set(ev[key])
    assert ev["given_labels"]["dice"] < 1.0  # the noisy labels really are scored against the clean ones


def test_pipeline_outputs_match_the_given_labels(svl_run):
    out, data = svl_run["out"], svl_run["data"]
    given = sorted((data / "labelsTr").iterdir())
    refined = sorted((out / "refined_labels").iterdir())
    assert [p.name for p in refined] == [p.name for p in given]
    for g, r in zip(given, refined):
        gi, ri = nib.load(str(g)), nib.load(str(r))
        assert ri.shape == gi.shape
        np.testing.assert_allclose(ri.affine, gi.affine)
        assert ri.get_data_dtype() == gi.get_data_dtype()
        assert ri.header["descrip"] == gi.header["descrip"]
        np.testing.assert_allclose(ri.header.get_zooms(), gi.header.get_zooms())
        assert set(np.unique(np.asarray(ri.dataobj))) <= {0, 1}
    assert (out / "model.pt").is_file()
    png = (out / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_every_stage_and_round(svl_run):
    report = json.loads((svl_run["out"] / "report.json").read_text())
    assert report["method"] == "svl-drl" and report["updates"] == 8
    stages = [e["stage"] for e in report["entries"]]
    assert stages[0] == "warmup" and "transition" in stages and "full" in stages
    full_rounds = sorted({e["round"] for e in report["entries"] if e["stage"] == "full"})
    assert full_rounds == [1, 2]
    for e in report["entries"]:
        assert {"losses", "rewards", "weights", "updates", "cpu_s"} <= set(e)
        assert "dice_loss" in e["losses"]
    rl = [e for e in report["entries"] if e["stage"] in ("transition", "full")]
    assert all("value_loss" in e["losses"] and "episode_reward" in e["rewards"] for e in rl)
    assert any("pred_vs_given_dice" in e for e in report["entries"])  # agreement with the given labels
    assert [r["round"] for r in report["refinements"]] == [1, 2]
    assert all(0.0 <= r["refined_vs_given_dice"] <= 1.0 for r in report["refinements"])
    assert any("intensity_reward" in e["rewards"] for e in report["entries"] if e["stage"] == "full")


@pytest.mark.parametrize("method", ["noisy", "coteaching"])
def test_comparators_run(folder, tmp_path, method):
    data, _ = folder
    out = tmp_path / method
    assert main(["pipeline", "--data", str(data), "--out", str(out), "--method", method,
                 *[a if a != "8" else "3" for a in FAST]]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method and report["updates"] == 3
    assert len(list((out / "refined_labels").iterdir())) == len(SHAPES)
    assert (out / "training_curves.png").is_file()


def test_no_warmup_ablation_runs(folder, tmp_path):
    data, _ = folder
    out = tmp_path / "nowarm"
    assert main(["pipeline", "--data", str(data), "--out", str(out), "--stages", "transition", "full-rl",
                 *[a if a != "8" else "4" for a in FAST]]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages"] == ["transition", "full"]
    assert "warmup" not in {e["stage"] for e in report["entries"]}


def test_segment_odd_shape_keeps_the_image_geometry(svl_run, tmp_path):
    data = svl_run["data"]
    out = tmp_path / "masks"
    assert main(["segment", "--model", str(svl_run["out"]), "--images", str(data / "imagesTs"), "--out", str(out),
                 "--window", "16", "--no-progress"]) == 0
    src = nib.load(str(data / "imagesTs" / "new_0000.nii.gz"))
    got = nib.load(str(out / "new.nii.gz"))
    assert got.shape == ODD == src.shape
    np.testing.assert_allclose(got.affine, src.affine)
    np.testing.assert_allclose(got.header.get_zooms(), src.header.get_zooms())
    assert got.header["descrip"] == src.header["descrip"]
    assert set(np.unique(np.asarray(got.dataobj))) <= {0, 1}


def test_segment_flips_average_the_probability(svl_run, tmp_path, monkeypatch, capsys):
    """By default (``--flips 4``) every image's probability is the mean over four flipped copies
    (the mask is that mean > 0.5); ``--flips 1`` is one pass; a count outside 1/2/4/8 is refused
    before anything is read."""
    from test_flip_averaging import count_flips

    import agents.staged.segment as seg
    from agents.staged.checkpoint import load_model
    from svl_env.data.nifti import load_case

    data = svl_run["data"]
    calls = count_flips(monkeypatch, seg)
    out = tmp_path / "masks"
    assert main(["segment", "--model", str(svl_run["out"]), "--images", str(data / "imagesTs"), "--out", str(out),
                 "--window", "16", "--no-progress"]) == 0
    assert calls == [4]  # the one test image, four copies
    model, _ = load_model(svl_run["out"])
    image = load_case(data / "imagesTs" / "new_0000.nii.gz", None).image
    want = seg.predict_probability(model, image, window=16, flips=4) > 0.5
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "new.nii.gz")).dataobj) > 0, want)
    calls.clear()
    assert main(["segment", "--model", str(svl_run["out"]), "--images", str(data / "imagesTs"),
                 "--out", str(tmp_path / "one"), "--window", "16", "--flips", "1", "--no-progress"]) == 0
    assert calls == [1]
    with pytest.raises(SystemExit) as exc:  # an argparse usage error
        main(["segment", "--model", str(svl_run["out"]), "--images", str(data / "imagesTs"),
              "--out", str(tmp_path / "m3"), "--flips", "3", "--no-progress"])
    assert exc.value.code == 2 and "--flips" in _one_line_error(capsys) and not (tmp_path / "m3").exists()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_exits_2_with_one_line(folder, tmp_path, capsys):
    data, clean = folder
    out = str(tmp_path / "o")
    assert main(["pipeline", "--data", str(tmp_path / "missing"), "--out", out, *FAST]) == 2
    assert "not found" in _one_line_error(capsys)
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    assert main(["pipeline", "--data", str(empty), "--out", out, *FAST]) == 2
    assert "svl-drl pipeline: error:" in _one_line_error(capsys)
    assert main(["pipeline", "--data", str(data), "--out", out, "--stages", "cooldown", *FAST]) == 2
    assert "unknown stage" in _one_line_error(capsys)
    assert main(["pipeline", "--data", str(data), "--out", out, "--eval-labels", str(tmp_path / "nope"), *FAST]) == 2
    assert "--eval-labels" in _one_line_error(capsys)
    assert main(["pipeline", "--data", str(data), "--out", str(data), *FAST]) == 2
    assert "overwrite" in _one_line_error(capsys)
    bad = tmp_path / "bad"
    (bad / "imagesTr").mkdir(parents=True)
    (bad / "labelsTr").mkdir()
    (bad / "imagesTr" / "x.nii.gz").write_bytes(b"not a nifti at all")
    (bad / "labelsTr" / "x.nii.gz").write_bytes(b"junk")
    assert main(["pipeline", "--data", str(bad), "--out", out, *FAST]) == 2
    assert "x.nii.gz" in _one_line_error(capsys)
    assert main(["segment", "--model", str(tmp_path / "nomodel"), "--images", str(data / "imagesTs"),
                 "--out", out, "--no-progress"]) == 2
    assert "not found" in _one_line_error(capsys)


def test_swin_unetr_without_monai_fails_cleanly(folder, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("monai") is not None:
        pytest.skip("monai is installed (test_swin_unetr_with_monai covers it)")
    data, _ = folder
    assert main(["pipeline", "--data", str(data), "--out", str(tmp_path / "o"), "--backbone", "swin_unetr",
                 *FAST]) == 2
    line = _one_line_error(capsys)
    assert "monai" in line and "pip install" in line


def test_swin_unetr_with_monai():
    pytest.importorskip("monai")
    from agents.staged.model import N_STATE, make_model

    m = make_model({"backbone": "swin_unetr", "feature_size": 12}, seed=0)
    x = torch.rand(1, 1, 20, 24, 18)
    assert m(x).shape == (1, 1, 20, 24, 18)
    lab, inten, val = m.agent_outputs(m.encode(x), torch.rand(1, N_STATE, 20, 24, 18))
    assert lab.shape == (1, 4, 20, 24, 18) and inten.shape == (1, 3, 20, 24, 18) and val.shape == (1, 2, 20, 24, 18)


def test_checkpoint_round_trip(tmp_path):
    from agents.staged.checkpoint import load_model, save_model
    from agents.staged.model import N_STATE, make_model

    m = make_model({"width": 4, "depth": 2}, seed=3)
    path = save_model(tmp_path / "run" / "model.pt", m, {"window": 32, "modality": "mr"})
    m2, meta = load_model(tmp_path / "run")  # the folder works as well as the file
    assert meta == {"window": 32, "modality": "mr"} and m2.config == m.config
    x = torch.rand(2, 1, 11, 13, 9)
    s = torch.rand(2, N_STATE, 11, 13, 9)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x))
        for a, b in zip(m.agent_outputs(m.encode(x), s), m2.agent_outputs(m2.encode(x), s)):
            torch.testing.assert_close(a, b)
    assert not list(path.parent.glob(".*tmp"))  # atomic write leaves no temporary file
    other = save_checkpoint(tmp_path / "other.pt", "va3c", {}, {"model": {"w": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="kind 'va3c'"):
        load_model(other)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_stage_weights_follow_the_paper():
    from agents.staged.losses import LossWeights, stage_weights
    from agents.staged.harness import make_train_config
    from agents.staged.methods.svl_drl import stage_plan

    w = LossWeights(lambda_max=0.4, alpha=0.1, beta_max=0.2, beta_ramp=0.5)
    assert stage_weights("warmup", 0.7, w) == {"dice": 1.0, "value": 0.0, "policy": 0.0}
    t = stage_weights("transition", 0.5, w)
    assert t["value"] == pytest.approx(0.2) and t["dice"] == pytest.approx(0.8) and t["policy"] == 0.0
    f = stage_weights("full", 1.0, w)
    assert f == pytest.approx({"dice": 0.7, "value": 0.1, "policy": 0.2})
    assert stage_weights("full", 0.25, w)["policy"] == pytest.approx(0.1)
    cfg = make_train_config()
    plan = stage_plan(("transition", "full"), cfg)
    assert [s for s, _, _ in plan] == ["transition", "full"] and plan[0][1] == 0.0 and plan[-1][2] == 1.0
    with pytest.raises(ValueError):
        LossWeights(alpha=0.6, beta_max=0.5)


def test_small_loss_selection_is_per_class():
    from agents.staged.methods.coteaching import small_loss_mask

    label = torch.zeros(1, 1, 4, 4, 4)
    label[..., :1, :, :] = 1  # 16 foreground, 48 background voxels
    loss = torch.arange(64, dtype=torch.float32).view(1, 1, 4, 4, 4)
    keep = small_loss_mask(loss, label, 0.25)  # 4 voxels (0.25 x |foreground|) dropped per class
    assert int(keep[label > 0].sum()) == 12 and int(keep[label == 0].sum()) == 44
    assert keep.view(-1)[:12].all() and not keep.view(-1)[12:16].any()  # largest foreground losses dropped
    assert not keep.view(-1)[60:].any() and keep.view(-1)[16:60].all()
    assert small_loss_mask(loss, label, 0.0).all()


@pytest.mark.parametrize("encoder_grad", [False, True])
def test_label_agent_losses_reach_the_encoder_only_when_asked(folder, encoder_grad):
    """``agent_encoder_grad``: the label agents' value / policy losses train their own decoders,
    and the shared encoder only when the option is on (default off)."""
    from agents.staged.data import load_training_set
    from agents.staged.label_refinement import LabelAgentEpisodes
    from agents.staged.losses import seg_loss
    from agents.staged.model import make_model
    from agents.staged.harness import DEFAULT_TRAIN

    assert DEFAULT_TRAIN["agent_encoder_grad"] is False
    data, _ = folder
    ts = load_training_set(data)
    model = make_model({"width": 4}, seed=0)
    ep = LabelAgentEpisodes(ts, num_envs=2, patch_shape=(16, 16, 16), max_steps=2, encoder_grad=encoder_grad)
    out = ep.run(model, seed=3, seg_loss_fn=seg_loss)
    (out["value_loss"] + out["policy_loss"]).backward()
    enc = [p.grad for p in model.encoder.parameters()]
    dec = [p.grad for p in model.policy_decoder.parameters()]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in dec[:1])
    touched = any(g is not None and bool(g.abs().sum() > 0) for g in enc)
    assert touched is encoder_grad


@pytest.mark.parametrize("method", ["svl-drl", "self-training"])
def test_refit_trains_on_the_last_rounds_labels(folder, tmp_path, method):
    """``--refit F``: every round inside the loop (the last at the end of Full RL), then F of the
    budget of plain segmentation updates; the output labels are the last round's."""
    data, _ = folder
    out = tmp_path / method
    assert main(["pipeline", "--data", str(data), "--out", str(out), "--method", method, "--refit", "0.3",
                 *[a if a != "8" else "10" for a in FAST]]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stage_plan"]] == ["warmup", "transition", "full", "refit"]
    assert report["stage_plan"][-1]["start"] == pytest.approx(0.7)
    refit = [e for e in report["entries"] if e["stage"] == "refit"]
    assert len(refit) == 1 and refit[0]["updates"] == 3 and refit[0]["weights"]["value"] == 0.0
    assert all(e["updates"] > 0 for e in report["entries"])
    rounds = report["refinements"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["update"] == refit[0]["first_update"] == 7
    assert report["refined_labels_from"].endswith("last round)")
    with pytest.raises(ValueError, match="refit_frac"):
        from agents.staged.harness import make_train_config

        make_train_config(warmup_frac=0.5, refit_frac=0.5)
