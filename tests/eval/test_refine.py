"""Refining whole NIfTI volumes with a trained policy (agents.eval.refine, ``svl-drl refine``)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from agents.cli import main
from agents.common.checkpoint import save_checkpoint
from agents.common.windows import grid_starts
from agents.eval.refine import observe, refine_volume
from agents.va3c import VA3CPolicy
from svl_env import SVLDRLVectorEnv

SHAPE = (97, 115, 93)


class Identity:
    """Keep every voxel."""

    def act(self, obs, info=None, deterministic=True):
        return np.zeros((obs.shape[0], *obs.shape[2:]), dtype=np.int64)


class SetForeground:
    def act(self, obs, info=None, deterministic=True):
        return np.ones((obs.shape[0], *obs.shape[2:]), dtype=np.int64)


def _affine():
    a = np.deg2rad(20.0)
    aff = np.eye(4)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff[:3, :3] = rot @ np.diag([0.8, 0.9, 2.0])
    aff[:3, 3] = (-40.0, 10.0, 75.0)
    return aff


def _volume(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [s / 2 for s in shape]
    ball = ((zz - c[0]) / 20) ** 2 + ((yy - c[1]) / 25) ** 2 + ((xx - c[2]) / 18) ** 2 < 1
    img = (np.where(ball, 300.0, 80.0) + rng.normal(0, 15, shape)).astype(np.int16)
    lab = ball.astype(np.uint8)
    return img, lab


def _write(path, data, dtype):
    img = nib.Nifti1Image(np.asarray(data), _affine())
    img.set_data_dtype(dtype)
    img.header["descrip"] = b"svl-drl test label"
    img.set_qform(_affine(), code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny (untrained) vA3C policy checkpoint, patch 16, 2 steps."""
    pol = VA3CPolicy.untrained({}, seed=0, width=4, depth=1)
    pol.config["env"] = {"patch_size": 16, "max_steps": 2}
    return pol.save(tmp_path_factory.mktemp("ck") / "checkpoint.pt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("nii")
    img, lab = _volume()
    _write(root / "images" / "case_a_0000.nii.gz", img, np.int16)
    _write(root / "labels" / "case_a.nii.gz", lab, np.uint8)
    return root


def test_observation_matches_the_env():
    env = SVLDRLVectorEnv(2, patch_size=12, autoreset_mode=AutoresetMode.DISABLED, return_tensors=True)
    obs, _ = env.reset(seed=3)
    s = env.state_tensors()
    assert torch.allclose(observe(s["image"], s["mask"], s["annotation"], 0, env.max_steps), obs)
    obs, *_ = env.step(torch.randint(0, 4, (2, 12, 12, 12)))
    s = env.state_tensors()
    assert torch.allclose(observe(s["image"], s["mask"], s["annotation"], 1, env.max_steps), obs)


def test_grid_covers_every_voxel():
    for size, patch in [(97, 32), (32, 32), (10, 32), (115, 16)]:
        starts = grid_starts(size, patch, 0.25)
        covered = np.zeros(max(size, patch), bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered[:size].all() and starts[-1] + patch >= size


def test_refine_volume_shape_and_identity():
    img, lab = _volume((30, 21, 17))
    img = img.astype(np.float32) / img.max()
    out = refine_volume(Identity(), np.clip(img, 0, 1), lab, patch_size=16, max_steps=2)
    assert out.shape == lab.shape and np.array_equal(out, lab.astype(bool))
    full = refine_volume(SetForeground(), np.clip(img, 0, 1), lab, patch_size=(8, 16, 12), max_steps=1, overlap=0.5)
    assert full.all()


def test_refine_roundtrip_keeps_shape_affine_header(folder, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["refine", "--checkpoint", str(ckpt), "--images", str(folder / "images"), "--labels",
               str(folder / "labels"), "--out", str(out), "--no-progress", "--batch-size", "8"])
    assert rc == 0, capsys.readouterr().err
    src = nib.load(str(folder / "labels" / "case_a.nii.gz"))
    res = nib.load(str(out / "case_a.nii.gz"))
    assert res.shape == SHAPE == src.shape
    assert np.allclose(res.affine, src.affine)
    assert res.get_data_dtype() == src.get_data_dtype()
    assert res.header["descrip"] == src.header["descrip"]
    assert np.allclose(res.header.get_zooms(), src.header.get_zooms())
    assert int(res.header["qform_code"]) == int(src.header["qform_code"])
    data = np.asarray(res.dataobj)
    assert set(np.unique(data)) <= {0, 1}


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs_exit_2(folder, ckpt, tmp_path, capsys):
    base = ["refine", "--no-progress", "--out", str(tmp_path / "o")]
    # missing checkpoint
    assert main(base + ["--checkpoint", str(tmp_path / "nope.pt"), "--images", str(folder / "images"),
                        "--labels", str(folder / "labels")]) == 2
    assert "checkpoint not found" in _err(capsys)
    # checkpoint of another agent kind
    other = save_checkpoint(tmp_path / "ppo.pt", "ppo", {}, {"model": {"w": torch.zeros(1)}})
    assert main(base + ["--checkpoint", str(other), "--images", str(folder / "images"),
                        "--labels", str(folder / "labels")]) == 2
    assert "kind 'ppo'" in _err(capsys)
    # missing labels folder
    assert main(base + ["--checkpoint", str(ckpt), "--images", str(folder / "images"),
                        "--labels", str(tmp_path / "missing")]) == 2
    assert "labels folder not found" in _err(capsys)
    # a label without its image
    lonely = tmp_path / "lonely"
    _write(lonely / "other.nii.gz", np.zeros((8, 8, 8), np.uint8), np.uint8)
    assert main(base + ["--checkpoint", str(ckpt), "--images", str(folder / "images"), "--labels", str(lonely)]) == 2
    assert "no image for label" in _err(capsys)
    # shape mismatch between image and label
    bad = tmp_path / "bad"
    _write(bad / "images" / "x.nii.gz", np.zeros((10, 12, 14), np.int16), np.int16)
    _write(bad / "labels" / "x.nii.gz", np.zeros((10, 12, 13), np.uint8), np.uint8)
    assert main(base + ["--checkpoint", str(ckpt), "--images", str(bad / "images"),
                        "--labels", str(bad / "labels")]) == 2
    assert "does not match image shape" in _err(capsys)
