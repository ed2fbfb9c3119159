"""The staged pipeline's segmentation recipe (inference window) and the plain-U-Net control."""

from __future__ import annotations


import numpy as np
import pytest

from agents.staged.harness import make_train_config


def test_window_defaults_to_the_training_patch():
    assert make_train_config()["window"] == make_train_config()["patch"] == 32
    assert make_train_config(patch=24)["window"] == 24
    assert make_train_config(patch=24, window=48)["window"] == 48  # an explicit window is kept
    cfg = make_train_config(patch=16)
    assert make_train_config(**cfg)["window"] == 16  # resolving twice changes nothing
    with pytest.raises(ValueError, match="window"):
        make_train_config(window=-1)


def test_pipeline_cli_passes_window(tmp_path, monkeypatch):
    import argparse

    from agents.cli import pipeline as cli

    seen = {}

    def fake_run_pipeline(data, out, **kw):
        seen.update(kw["config"])
        return {"updates": 1, "train_cpu_s": 0.0, "cases": []}

    monkeypatch.setattr("agents.staged.pipeline.run_pipeline", fake_run_pipeline)
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--window", "40"])
    cli.run(args)
    assert seen["window"] == 40


def test_plain_unet_patches_and_zscore(benchmark_script):
    pu = benchmark_script("plain_unet")
    img = np.arange(20 * 18 * 30, dtype=np.float32).reshape(20, 18, 30)
    z = pu.zscore(img)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1.0) < 1e-4
    lab = img > img.mean()
    x, y = pu.random_patches([z], [lab], np.random.default_rng(0), 3, 24)  # 18 < 24: edge-padded
    assert x.shape == y.shape == (3, 1, 24, 24, 24)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_plain_unet_learns_a_bright_cube(benchmark_script):
    pytest.importorskip("monai")
    import torch

    torch.set_num_threads(1)
    pu = benchmark_script("plain_unet")
    g = np.random.default_rng(0)
    imgs, labs = [], []
    for _ in range(2):
        lab = np.zeros((20, 20, 20), bool)
        lab[5:15, 4:14, 6:16] = True
        imgs.append(pu.zscore(lab + 0.3 * g.standard_normal(lab.shape)))
        labs.append(lab)
    model, cpu_s, updates = pu.train_plain_unet(imgs, labs, steps=40, seed=0, batch=2, patch=16, lr=1e-2)
    assert cpu_s > 0 and updates == 40
    pred = pu.predict(model, imgs[0], patch=16)
    assert pred.shape == labs[0].shape
    assert pu.mean_dice([pred], [labs[0]]) > 0.8
