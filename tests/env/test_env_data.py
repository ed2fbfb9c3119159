"""The environment on NIfTI folders and in-memory arrays: spacing reaches the metrics,
noisy-label folders reward against the annotation, bad data is named."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svl_env import CaseSource, SVLDRLEnv, SVLDRLVectorEnv
from svl_env import metrics as M

SPACING = (0.8, 0.8, 2.5)


def _write_folder(root: Path, n=2, shape=(40, 36, 20), label_scale=1):
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n):
        ball = ((zz - 20 - i) / 9) ** 2 + ((yy - 18) / 9) ** 2 + ((xx - 10) / 4) ** 2 < 1
        image = np.where(ball, 60, -900).astype(np.int16)
        for sub, data in (("imagesTr", image), ("labelsTr", (ball * label_scale).astype(np.uint8))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1.0])), str(root / sub / f"case_{i}.nii.gz"))
    return root


def test_folder_episode_keeps_spacing_and_hd95_uses_it(tmp_path):
    root = _write_folder(tmp_path / "Task01")
    env = SVLDRLVectorEnv(2, data=str(root), patch_size=(24, 24, 16), noise="none")
    env.reset(seed=0)
    s = env.state_tensors()
    np.testing.assert_allclose(s["spacing"].numpy(), [SPACING, SPACING], rtol=1e-6)
    truth = s["truth"][0].numpy().astype(bool)
    assert truth.any()
    shifted = np.roll(truth, 1, axis=2)  # one voxel along the 2.5 mm axis
    assert M.hd95(shifted, truth, SPACING)[0] == pytest.approx(2.5)
    assert M.hd95(shifted, truth, (1.0, 1.0, 1.0))[0] == pytest.approx(1.0)


def test_noisy_label_folder_rewards_against_annotation(tmp_path):
    root = _write_folder(tmp_path / "Task02")
    with pytest.raises(ValueError, match="reward_target='annotation'"):
        SVLDRLEnv(data=str(root), labels="noisy", patch_size=16)
    env = SVLDRLEnv(data=str(root), labels="noisy", reward_target="annotation", patch_size=16)
    obs, info = env.reset(seed=0)
    assert "dice_clean" not in info and info["dice"] == 1.0  # the mask starts as the annotation
    with pytest.raises(ValueError, match="noise='none'"):
        SVLDRLEnv(data=str(root), labels="noisy", reward_target="annotation", noise="mt", patch_size=16)


def test_multilabel_folder_uses_chosen_label(tmp_path):
    root = _write_folder(tmp_path / "Task03", label_scale=2)
    env = SVLDRLEnv(data=str(root), label_value=2, noise="none", patch_size=16)
    env.reset(seed=0)
    assert env.state_tensors()["truth"].sum() > 0
    env1 = SVLDRLEnv(data=str(root), label_value=1, noise="none", patch_size=16)
    env1.reset(seed=0)
    assert env1.state_tensors()["truth"].sum() == 0


def test_folder_errors_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        SVLDRLEnv(data=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="imagesTr"):
        SVLDRLEnv(data=str(tmp_path / "empty"))


def test_array_source_validates_and_runs():
    image = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    label = image > 0.7
    with pytest.raises(ValueError, match="NaN"):
        CaseSource.from_arrays([np.full((8, 8, 8), np.nan)], [np.zeros((8, 8, 8))])
    with pytest.raises(ValueError, match="shape"):
        CaseSource.from_arrays([image], [label[:10]])
    with pytest.raises(ValueError, match="3D"):
        CaseSource.from_arrays([image[0]], [label[0]])
    env = SVLDRLEnv(data=CaseSource.from_arrays([image], [label]), noise="flip", patch_size=16)
    obs, info = env.reset(seed=0)
    assert obs.shape == (6, 16, 16, 16) and 0 <= info["dice_clean"] <= 1
