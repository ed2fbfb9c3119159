"""The dataset fingerprint, the settings derived from it (agents.staged.fingerprint), and the
repeatability of a pipeline run with a budget in updates. Tiny folders, a 4-channel U-Net."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from agents.staged.fingerprint import derive_settings, fingerprint
from agents.staged.pipeline import run_pipeline

from test_pipeline import _make_folder  # tests/staged is on sys.path (rootdir-less test folders)


def _fp(median, spacing=(1.0, 1.0, 1.0)):
    sp = [float(s) for s in spacing]
    return {"shape": {"median": [float(m) for m in median], "min": [int(m) for m in median]},
            "spacing": {"median": sp}, "anisotropy": max(sp) / min(sp),
            "normalisation": {"modality_setting": "auto", "applied": {"mr": 3}}}


def _values(d):
    return {k: d[k]["value"] for k in ("patch", "batch", "window")}


def test_large_isotropic_volumes_give_todays_defaults():
    d = derive_settings(_fp((40, 36, 33)))
    assert _values(d) == {"patch": 32, "batch": 4, "window": 32}
    assert {d[k]["source"] for k in ("patch", "batch", "window", "normalisation")} == {"fingerprint"}
    assert d["normalisation"]["value"] == "mr" and d["rule"]["multiple"] == 8


def test_small_volumes_give_a_smaller_patch_and_a_larger_batch():
    assert _values(derive_settings(_fp((18.5, 17.5, 17.5)))) == {"patch": 16, "batch": 32, "window": 16}
    assert _values(derive_settings(_fp((31, 40, 40)))) == {"patch": 24, "batch": 9, "window": 24}
    # smaller than one network multiple: the multiple itself (the sampler pads the volume)
    assert _values(derive_settings(_fp((6, 7, 9))))["patch"] == 8
    assert _values(derive_settings(_fp((20, 20, 20)), multiple=32))["patch"] == 32  # Swin UNETR's multiple


def test_anisotropic_spacing_gives_fewer_voxels_along_the_thick_axis():
    d = derive_settings(_fp((80, 80, 30), spacing=(0.8, 0.8, 4.0)))
    assert d["rule"]["anisotropic"] is True
    assert _values(d) == {"patch": [32, 32, 8], "batch": 16, "window": [32, 32, 8]}
    # below the threshold (nnU-Net's 3): cubic
    assert _values(derive_settings(_fp((80, 80, 30), spacing=(1.0, 1.0, 2.5))))["patch"] == 24


def test_user_values_win():
    d = derive_settings(_fp((40, 40, 40)), user={"patch": 16, "batch": None, "window": None})
    assert _values(d) == {"patch": 16, "batch": 32, "window": 16}  # batch keeps batch x patch voxels
    assert (d["patch"]["source"], d["batch"]["source"], d["window"]["source"]) == ("user", "fingerprint", "user")
    d = derive_settings(_fp((18, 18, 18)), user={"batch": 2, "window": 40, "modality": "ct"})
    assert _values(d) == {"patch": 16, "batch": 2, "window": 40}
    assert [d[k]["source"] for k in ("patch", "batch", "window", "normalisation")] == \
        ["fingerprint", "user", "user", "user"]


def test_fingerprint_of_raw_images():
    from agents.staged.data import TrainingSet
    from svl_env.data.nifti import Case

    shapes = [(10, 12, 14), (12, 12, 12), (14, 10, 8)]
    raws, cases = [], []
    for i, sh in enumerate(shapes):
        lab = np.zeros(sh, bool)
        lab[2:6, 2:6, 2:6] = True
        raw = np.where(lab, 100.0, -1000.0 if i == 0 else 10.0).astype(np.float32)
        raws.append(raw)
        cases.append(Case(f"c{i}", np.zeros(sh, np.float32), lab, (1.0, 1.0, 3.0 + i), np.eye(4),
                          Path(f"c{i}.nii.gz"), Path(f"c{i}.nii.gz")))
    fp = fingerprint(TrainingSet(cases), raw_images=raws)
    assert fp["shape"] == {"median": [12.0, 12.0, 12.0], "min": [10, 10, 8]}
    assert fp["spacing"]["median"] == [1.0, 1.0, 4.0] and fp["anisotropy"] == pytest.approx(4.0)
    fg = fp["intensity"]["foreground"]
    assert fg["n"] == 3 * 64 and fg["p50"] == fg["mean"] == 100.0 and fg["std"] == 0.0
    assert fp["intensity"]["overall"]["p0.5"] == -1000.0
    assert fp["normalisation"]["applied"] == {"ct": 1, "mr": 2}  # "auto": CT when the raw min < -500
    total = sum(int(np.prod(s)) for s in shapes)
    assert fp["foreground_fraction"]["overall"] == pytest.approx(3 * 64 / total)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("fp"))[0]


TINY = dict(model_config={"width": 4}, threads=1, progress=False, plot=False)


def test_report_carries_fingerprint_and_derived_settings(data, tmp_path):
    rep = run_pipeline(data, tmp_path / "a", method="noisy", updates=2, **TINY)
    on_disk = json.loads((tmp_path / "a" / "report.json").read_text())
    assert on_disk["fingerprint"]["cases"] == 4 and on_disk["fingerprint"]["shape"]["min"] == [16, 16, 16]
    ds = on_disk["derived_settings"]
    # the tiny folder's volumes (16..20 voxels) are smaller than today's 32^3 patch
    assert _values(ds) == {"patch": 16, "batch": 32, "window": 16}
    assert {ds[k]["source"] for k in ("patch", "batch", "window", "normalisation")} == {"fingerprint"}
    assert (rep["config"]["patch"], rep["config"]["batch"], rep["config"]["window"]) == (16, 32, 16)
    rep = run_pipeline(data, tmp_path / "b", method="noisy", updates=1, config={"batch": 3}, modality="mr", **TINY)
    assert rep["derived_settings"]["batch"] == {"value": 3, "source": "user"} and rep["config"]["batch"] == 3
    assert rep["derived_settings"]["normalisation"]["source"] == "user"


def test_per_axis_patch_runs_end_to_end(data, tmp_path):
    from agents.staged.checkpoint import load_model

    rep = run_pipeline(data, tmp_path / "c", method="svl-drl", updates=4, config={"patch": [16, 16, 8], "rounds": 1},
                       **TINY)
    assert rep["config"]["patch"] == [16, 16, 8] and rep["config"]["window"] == [16, 16, 8]
    assert rep["config"]["batch"] == 64  # 4 x 32^3 voxels
    assert load_model(tmp_path / "c")[1]["window"] == [16, 16, 8]


def _state(out: Path):
    model, _ = __import__("agents.staged.checkpoint", fromlist=["load_model"]).load_model(out)
    labels = [np.asarray(nib.load(str(p)).dataobj) for p in sorted((out / "refined_labels").iterdir())]
    return model.state_dict(), labels


def _untimed(x):
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if not (k.endswith("cpu_s") or k.endswith("wall_s"))}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


@pytest.mark.parametrize("method,config", [("svl-drl", {"rounds": 2, "intensity_every": 2}), ("noisy", {}),
                                           ("coteaching", {})])
def test_a_budget_in_updates_repeats_exactly(data, tmp_path, method, config):
    reps, states = [], []
    for k in range(2):
        out = tmp_path / f"run{k}"
        rep = run_pipeline(data, out, method=method, updates=6, seed=5, config={"patch": 16, "batch": 4, **config},
                           **TINY)
        reps.append(json.loads(json.dumps(_untimed(rep), default=str)))
        states.append(_state(out))
    (sd0, lab0), (sd1, lab1) = states
    assert len(lab0) == 4 and all(np.array_equal(a, b) for a, b in zip(lab0, lab1))
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    assert reps[0] == reps[1]
    if method == "svl-drl":
        assert len(reps[0]["refinements"]) == 2
