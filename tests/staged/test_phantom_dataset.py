"""benchmarks/staged_pipeline.py's phantom data set: --spacing (block averaging, affine) and --preset."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import svl_env.data.phantom as phantom


def _recording(monkeypatch):
    """Record every generate_phantoms call's shape and output (make_phantom_dataset imports it per call)."""
    calls = []
    real = phantom.generate_phantoms

    def gen(keys, shape, **kw):
        out = real(keys, shape, **kw)
        calls.append((tuple(shape), out[0][0].clone(), out[1][0].clone()))
        return out

    monkeypatch.setattr(phantom, "generate_phantoms", gen)
    return calls


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


@pytest.mark.parametrize("spacing", [(1, 1, 2), (2, 1, 3)])
def test_spacing_block_averages_and_writes_the_affine(tmp_path, monkeypatch, spacing, benchmark_script):
    sp = benchmark_script("staged_pipeline")
    calls = _recording(monkeypatch)
    s = sp.make_phantom_dataset(tmp_path, n_train=2, n_test=1, seed=3, size=(8, 10), families=["folded"],
                                noise="mt", noise_ratio=1.0, spacing=spacing)
    assert s["spacing"] == list(spacing) and s["corrupted"] == [0, 1]
    names = ["imagesTr/phantom_tr_000", "imagesTr/phantom_tr_001", "imagesTs/phantom_ts_000"]
    assert len(calls) == 3
    for name, (fine, img_hr, truth_hr) in zip(names, calls):
        img, nimg = _load(tmp_path / "data" / f"{name}.nii.gz")
        lab, nlab = _load(tmp_path / ("clean_labelsTr" if "Tr" in name else "clean_labelsTs")
                          / f"{name.split('/')[1]}.nii.gz")
        assert all(8 <= n <= 10 for n in img.shape) and lab.shape == img.shape
        assert fine == tuple(n * k for n, k in zip(img.shape, spacing))  # generated at 1 mm on the finer grid
        for n in (nimg, nlab):
            np.testing.assert_allclose(n.affine, np.diag([*map(float, spacing), 1.0]))
            assert tuple(float(z) for z in n.header.get_zooms()[:3]) == tuple(map(float, spacing))
        blocks = (img.shape[0], spacing[0], img.shape[1], spacing[1], img.shape[2], spacing[2])
        np.testing.assert_allclose(img, img_hr.numpy().reshape(blocks).mean((1, 3, 5)), rtol=1e-6, atol=1e-7)
        want = truth_hr.numpy().reshape(blocks).mean((1, 3, 5)) >= 0.5
        assert np.array_equal(lab > 0, want) and want.any()
        if "Tr" in name:  # the noise acts on the low-resolution truth
            noisy, nn = _load(tmp_path / "data" / "labelsTr" / f"{name.split('/')[1]}.nii.gz")
            assert noisy.shape == img.shape and not np.array_equal(noisy > 0, want)
            np.testing.assert_allclose(nn.affine, np.diag([*map(float, spacing), 1.0]))


def test_default_spacing_writes_what_it_always_wrote(tmp_path, monkeypatch, benchmark_script):
    sp = benchmark_script("staged_pipeline")
    calls = _recording(monkeypatch)
    sp.make_phantom_dataset(tmp_path, n_train=1, n_test=1, seed=0, size=(8, 9), noise="none", noise_ratio=0.0)
    img, nimg = _load(tmp_path / "data" / "imagesTs" / "phantom_ts_000.nii.gz")
    assert calls[1][0] == img.shape and np.array_equal(img, calls[1][1].numpy())
    np.testing.assert_array_equal(nimg.affine, np.eye(4))


def _parser(sp):
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--test-cases", type=int, default=64)
    ap.add_argument("--noise", default="mt")
    ap.add_argument("--noise-ratio", type=float, default=0.5)
    sp.add_phantom_args(ap)
    return ap


def test_preset_sets_defaults_and_flags_override(benchmark_script):
    sp = benchmark_script("staged_pipeline")
    ap = _parser(sp)
    args = sp.parse_with_preset(ap, ["--preset", "realistic", "--train", "3"], rename={"test": "test_cases"})
    assert (args.train, args.test_cases, args.noise_ratio) == (3, 16, 1.0)
    assert args.noise == sp.PRESETS["realistic"]["noise"] and args.noise.startswith("mt:")
    opts = sp.phantom_options(ap, args)
    assert opts == {"families": ["folded"], "modalities": ["mr"], "size": (64, 64), "spacing": (1, 1, 2)}
    plain = sp.parse_with_preset(_parser(sp), [])
    assert sp.phantom_options(ap, plain) == {"families": ["blob"], "modalities": ["mr"], "size": (32, 40),
                                             "spacing": (1, 1, 1)}
    assert sp.phantom_options(ap, sp.parse_with_preset(_parser(sp), ["--size", "64"]))["size"] == (64, 64)
    for bad in (["--spacing", "1,2"], ["--spacing", "0,1,1"], ["--size", "40,32"], ["--size", "a"]):
        with pytest.raises(SystemExit) as exc:
            sp.phantom_options(ap, sp.parse_with_preset(_parser(sp), bad))
        assert exc.value.code == 2


def test_plain_unet_accepts_the_data_options(tmp_path, monkeypatch, benchmark_script):
    pu = benchmark_script("plain_unet")
    seen = {}

    def fake_run(data, **kw):  # no training: only what main passes on
        seen["data"] = Path(data)
        return {"seed": 0, "steps": 0, "cpu_min": 0.0, "test_dice": None, "train_pred_dice": None}

    monkeypatch.setattr(pu, "run", fake_run)
    work = tmp_path / "w"
    assert pu.main(["--phantoms", str(work), "--train", "1", "--test-cases", "1", "--families", "folded",
                    "--size", "8,8", "--spacing", "1,2,1", "--noise", "flip"]) == 0
    img, nimg = _load(work / "data" / "imagesTr" / "phantom_tr_000.nii.gz")
    assert img.shape == (8, 8, 8) and tuple(float(z) for z in nimg.header.get_zooms()) == (1.0, 2.0, 1.0)
    assert seen["data"] == work / "data"
