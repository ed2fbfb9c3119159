"""Decathlon-style NIfTI reading / writing (svl_env.data: nifti, decathlon, patches), in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from svl_env.data.decathlon import DecathlonDataset
from svl_env.data.nifti import Case, DataError, load_case, normalise_intensity, save_label_like
from svl_env.data.patches import crop, pad_to, patch_origin

SPACING = (0.7, 0.7, 2.5)


def oblique_affine(spacing=SPACING, angle_deg=30.0, shift=(-50.0, 12.5, 80.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = shift
    return aff


def write(path: Path, data: np.ndarray, affine=None, dtype=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), oblique_affine() if affine is None else affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def make_volume(shape=(20, 18, 10), ct=True, seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [s / 2 for s in shape]
    ball = ((zz - c[0]) / 5) ** 2 + ((yy - c[1]) / 5) ** 2 + ((xx - c[2]) / 3) ** 2 < 1
    inner = ((zz - c[0]) / 2.5) ** 2 + ((yy - c[1]) / 2.5) ** 2 + ((xx - c[2]) / 1.5) ** 2 < 1
    label = ball.astype(np.uint8) + inner.astype(np.uint8)  # 0 background, 1 organ, 2 core
    if ct:
        raw = np.where(ball, 60.0, -1000.0) + rng.normal(0, 20, shape)
        raw = raw.astype(np.int16)
    else:
        raw = (np.where(ball, 400.0, 50.0) + rng.normal(0, 10, shape)).astype(np.float32)
    return raw, label


def make_dataset(root: Path, n=3, shape=(20, 18, 10), ct=True, label_dtype=np.uint8, image_suffix=""):
    for i in range(n):
        raw, label = make_volume(shape, ct=ct, seed=i)
        write(root / "imagesTr" / f"la_{i:03d}{image_suffix}.nii.gz", raw)
        write(root / "labelsTr" / f"la_{i:03d}.nii.gz", label.astype(label_dtype))
    return root


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------- round trip


def test_round_trip_anisotropic_oblique(tmp_path):
    root = make_dataset(tmp_path / "Task", n=2)
    ds = DecathlonDataset(root)
    assert len(ds) == 2 and ds.names == ["la_000", "la_001"]
    case = ds[0]
    assert isinstance(case, Case)
    assert case.name == "la_000"
    assert case.image.shape == (20, 18, 10) and case.image.dtype == np.float32
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    assert case.label.dtype == bool and case.label.shape == case.image.shape
    _, label = make_volume(seed=0)
    np.testing.assert_array_equal(case.label, label == 1)
    np.testing.assert_allclose(case.spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(case.affine, oblique_affine(), atol=1e-5)
    assert case.image_path == root / "imagesTr" / "la_000.nii.gz"
    assert case.label_path == root / "labelsTr" / "la_000.nii.gz"
    assert ds[0] is case  # cached
    assert DecathlonDataset(root, cache=False)[1] is not None
    assert ds[-1].name == "la_001"
    with pytest.raises(IndexError):
        ds[2]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_label_dtypes(tmp_path, dtype):
    root = make_dataset(tmp_path / "T", n=1, label_dtype=dtype)
    assert nib.load(str(root / "labelsTr" / "la_000.nii.gz")).get_data_dtype() == np.dtype(dtype)
    case = DecathlonDataset(root)[0]
    _, label = make_volume(seed=0)
    np.testing.assert_array_equal(case.label, label == 1)


def test_multilabel_reduced_to_chosen_value(tmp_path):
    root = make_dataset(tmp_path / "T", n=1, label_dtype=np.float32)
    _, label = make_volume(seed=0)
    c2 = DecathlonDataset(root, label_value=2)[0]
    np.testing.assert_array_equal(c2.label, label == 2)
    assert c2.label.any() and c2.label.sum() < (label > 0).sum()
    call = DecathlonDataset(root, label_value=None)[0]
    np.testing.assert_array_equal(call.label, label > 0)
    # a value absent from the case gives a legal empty label
    assert not DecathlonDataset(root, label_value=7)[0].label.any()


def test_plain_nii_and_hidden_files(tmp_path):
    root = tmp_path / "T"
    raw, label = make_volume()
    write(root / "imagesTr" / "a.nii", raw)
    write(root / "labelsTr" / "a.nii", label)
    (root / "imagesTr" / "._a.nii").write_bytes(b"\x00\x05\x16\x07junk")
    (root / "imagesTr" / ".DS_Store").write_bytes(b"junk")
    (root / "imagesTr" / "notes.txt").write_text("hello")
    ds = DecathlonDataset(root)
    assert ds.names == ["a"]
    assert ds[0].label.sum() == (label == 1).sum()


def test_4d_singleton_accepted(tmp_path):
    raw, label = make_volume()
    ip = write(tmp_path / "img.nii.gz", raw[..., None])
    lp = write(tmp_path / "lab.nii.gz", label[..., None])
    case = load_case(ip, lp)
    assert case.image.shape == raw.shape and case.label.shape == raw.shape


# ---------------------------------------------------------------------- normalisation


def test_ct_vs_mr_normalisation():
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1200, 1500, size=(16, 16, 8))
    out = normalise_intensity(ct, "ct", (-175.0, 250.0))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, (np.clip(ct, -175, 250) + 175) / 425, atol=1e-6)
    mr = rng.normal(300, 50, size=(16, 16, 8))
    mr[0, 0, 0] = 1e6  # outlier: percentile clipping keeps the rest spread out
    o = normalise_intensity(mr, "mr")
    assert o.min() == 0.0 and o.max() == 1.0
    assert 0.3 < np.median(o) < 0.7
    # auto: CT detection by the raw minimum
    np.testing.assert_allclose(normalise_intensity(ct, "auto"), out)
    np.testing.assert_allclose(normalise_intensity(mr, "auto"), o)
    n = normalise_intensity(np.array([[[2.0, 4.0], [6.0, 10.0]]]), "none")
    np.testing.assert_allclose(n.ravel(), [0, 0.25, 0.5, 1.0])
    assert not normalise_intensity(np.full((2, 2, 2), 5.0), "mr").any()
    with pytest.raises(ValueError):
        normalise_intensity(ct, "pet")


def test_dataset_modality_from_json_and_auto(tmp_path):
    ct_root = make_dataset(tmp_path / "CT", n=1, ct=True)
    ds = DecathlonDataset(ct_root)
    assert ds.modality == "auto"
    img = ds[0].image
    assert img.min() == 0.0 and img.max() <= 1.0
    raw, _ = make_volume(seed=0)
    np.testing.assert_allclose(img, normalise_intensity(raw, "ct"), atol=1e-6)

    mr_root = make_dataset(tmp_path / "MR", n=1, ct=False)
    (mr_root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}}))
    ds = DecathlonDataset(mr_root)
    assert ds.modality == "mr"
    raw, _ = make_volume(ct=False, seed=0)
    np.testing.assert_allclose(ds[0].image, normalise_intensity(raw, "mr"), atol=1e-6)
    (mr_root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    assert DecathlonDataset(mr_root).modality == "ct"


# -------------------------------------------------------------------------- pairing


def test_nnunet_0000_pairing(tmp_path):
    root = make_dataset(tmp_path / "T", n=2, image_suffix="_0000")
    # a second channel file must not become its own case
    raw, _ = make_volume(seed=5)
    write(root / "imagesTr" / "la_000_0001.nii.gz", raw)
    ds = DecathlonDataset(root)
    assert ds.names == ["la_000", "la_001"]
    case = ds[1]
    assert case.name == "la_001"
    assert case.image_path.name == "la_001_0000.nii.gz"
    assert case.label_path.name == "la_001.nii.gz"


def test_dataset_json_pairing(tmp_path):
    root = tmp_path / "T"
    raw, label = make_volume()
    # deliberately names that folder pairing would not match
    write(root / "imagesTr" / "heart_a.nii.gz", raw)
    write(root / "labelsTr" / "seg_a.nii.gz", label)
    write(root / "imagesTr" / "heart_b.nii.gz", raw)
    write(root / "labelsTr" / "seg_b.nii.gz", (label == 2).astype(np.uint8))
    # nnU-Net v1 style: json names case.nii.gz while the file is case_0000.nii.gz
    write(root / "imagesTr" / "heart_c_0000.nii.gz", raw)
    write(root / "labelsTr" / "seg_c.nii.gz", label)
    meta = {
        "name": "Toy",
        "modality": {"0": "CT"},
        "training": [
            {"image": "./imagesTr/heart_b.nii.gz", "label": "./labelsTr/seg_b.nii.gz"},
            {"image": "./imagesTr/heart_a.nii.gz", "label": "./labelsTr/seg_a.nii.gz"},
            {"image": "./imagesTr/heart_c.nii.gz", "label": "./labelsTr/seg_c.nii.gz"},
        ],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = DecathlonDataset(root)
    assert ds.names == ["seg_b", "seg_a", "seg_c"]
    assert ds.image_paths[2].name == "heart_c_0000.nii.gz"
    np.testing.assert_array_equal(ds[0].label, label == 2)
    np.testing.assert_array_equal(ds[1].label, label == 1)


def test_test_split_labels_optional(tmp_path):
    root = tmp_path / "T"
    raw, label = make_volume()
    write(root / "imagesTs" / "x_0000.nii.gz", raw)
    write(root / "imagesTs" / "y.nii.gz", raw)
    write(root / "labelsTs" / "y.nii.gz", label)
    ds = DecathlonDataset(root, split="test")
    assert ds.names == ["x", "y"]
    assert ds[0].label is None and ds[0].label_path is None
    np.testing.assert_allclose(ds[0].affine, oblique_affine(), atol=1e-5)
    assert ds[1].label is not None
    # train split without labels allowed when require_labels=False
    write(root / "imagesTr" / "z.nii.gz", raw)
    assert DecathlonDataset(root, require_labels=False)[0].label is None


# -------------------------------------------------------------------------- patches


def test_patch_origin_foreground_bias():
    shape, patch = (64, 64, 64), (16, 16, 16)
    label = np.zeros(shape, bool)
    label[50:54, 5:9, 40:44] = True
    rng = np.random.default_rng(0)

    def hit_rate(fg_prob):
        hits = 0
        for _ in range(600):
            o = patch_origin(shape, patch, label, rng.random(4), fg_prob=fg_prob)
            assert all(0 <= oa <= s - p for oa, s, p in zip(o, shape, patch))
            assert all(isinstance(v, int) for v in o)
            hits += bool(crop(label, o, patch).any())
        return hits / 600

    uniform = hit_rate(0.0)
    biased = hit_rate(0.66)
    assert uniform < 0.1
    assert biased > 0.6 and biased > 5 * uniform
    # u[0] < fg_prob always picks foreground voxel floor(u[1] * n_fg); the patch contains it
    fg = np.flatnonzero(label)
    for u1 in (0.0, 0.5, 0.999):
        o = patch_origin(shape, patch, label, np.array([0.0, u1, 0.5, 0.5]))
        v = np.unravel_index(fg[int(u1 * fg.size)], shape)
        rel = tuple(int(vi - oi) for vi, oi in zip(v, o))
        assert all(0 <= r < p for r, p in zip(rel, patch)) and crop(label, o, patch)[rel]
    # centred where the volume allows it
    o = patch_origin(shape, patch, label, np.array([0.0, 0.0, 0.5, 0.5]))
    assert o == (50 - 8, 0, 40 - 8)
    # deterministic in u
    u = np.array([0.9, 0.1, 0.2, 0.3])
    assert patch_origin(shape, patch, label, u) == patch_origin(shape, patch, label, u)
    # empty or missing label: uniform branch
    assert patch_origin(shape, patch, None, np.array([0.0, 0.0, 0.0, 0.0])) == (0, 0, 0)
    assert patch_origin(shape, patch, np.zeros(shape, bool), np.array([0.0, 0.999, 0.999, 0.999])) == (48, 48, 48)
    with pytest.raises(ValueError):
        patch_origin(shape, patch, label, np.array([0.1, 0.2]))


def test_crop_and_pad_smaller_volume():
    arr = np.arange(3 * 20 * 5, dtype=np.float32).reshape(3, 20, 5) + 1
    patch = (8, 8, 8)
    label = np.ones(arr.shape, bool)
    o = patch_origin(arr.shape, patch, label, np.array([0.1, 0.99, 0.5, 0.5]))
    assert o[0] == 0 and o[2] == 0 and 0 <= o[1] <= 12
    out = crop(arr, o, patch)
    assert out.shape == patch
    np.testing.assert_array_equal(out[:3, :, :5], arr[:, o[1] : o[1] + 8, :])
    assert not out[3:].any() and not out[:, :, 5:].any()
    edge = crop(arr, (0, 0, 0), patch, mode="edge")
    np.testing.assert_array_equal(edge[7], edge[2])
    padded = pad_to(arr, patch, value=-1)
    assert padded.shape == (8, 20, 8) and padded[5, 0, 0] == -1
    np.testing.assert_array_equal(padded[:3, :, :5], arr)
    assert pad_to(np.zeros((9, 9, 9)), patch).shape == (9, 9, 9)
    # crop of a larger volume is a copy of exactly the patch
    big = np.arange(10 * 10 * 10).reshape(10, 10, 10)
    c = crop(big, (1, 2, 2), patch)
    np.testing.assert_array_equal(c, big[1:9, 2:10, 2:10])
    c[0, 0, 0] = -5
    assert big[1, 2, 2] != -5


# -------------------------------------------------------------------------- writing


@pytest.mark.parametrize("dtype,ext", [(np.uint8, ".nii.gz"), (np.int16, ".nii"), (np.float32, ".nii.gz")])
def test_save_label_like_keeps_geometry(tmp_path, dtype, ext):
    _, label = make_volume()
    ref = tmp_path / f"ref{ext}"
    img = nib.Nifti1Image(label.astype(dtype), oblique_affine())
    img.header["descrip"] = b"reference label"
    img.set_qform(oblique_affine(), code=1)
    img.set_sform(oblique_affine(), code=2)
    nib.save(img, str(ref))
    mask = label == 2
    out = save_label_like(mask, ref, tmp_path / "out" / f"refined{ext}")
    assert out == tmp_path / "out" / f"refined{ext}"
    back = nib.load(str(out))
    r = nib.load(str(ref))
    assert back.shape == r.shape
    assert back.get_data_dtype() == r.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_allclose(back.affine, r.affine, atol=1e-6)
    np.testing.assert_allclose(back.header.get_zooms(), r.header.get_zooms())
    assert back.header["descrip"] == r.header["descrip"]
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask.astype(dtype))
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temp files left
    # overwrite of an existing output is fine, and loads back through load_case
    save_label_like(label == 1, ref, out)
    assert np.array_equal(np.asanyarray(nib.load(str(out)).dataobj) != 0, label == 1)


def test_save_label_like_with_an_image_reference_writes_unscaled_uint8(tmp_path):
    # segmentations of new images: the image's geometry, but uint8 without the image's scaling
    image, label = make_volume()
    ref = tmp_path / "img.nii.gz"
    img = nib.Nifti1Image(image.astype(np.int16), oblique_affine())
    img.header.set_slope_inter(0.5, -100.0)
    nib.save(img, str(ref))
    out = save_label_like((label == 1).astype(np.int64) * 3, ref, tmp_path / "seg.nii.gz", np.uint8)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, nib.load(str(ref)).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), (label == 1) * 3)
    with pytest.raises(ValueError, match="do not fit the on-disk dtype uint8"):
        save_label_like((label == 1) * 300, ref, tmp_path / "seg.nii.gz", np.uint8)


def test_save_label_like_refuses_input(tmp_path):
    _, label = make_volume()
    ref = write(tmp_path / "lab.nii.gz", label)
    before = ref.read_bytes()
    with pytest.raises(ValueError) as ei:
        save_label_like(label == 1, ref, tmp_path / "sub" / ".." / "lab.nii.gz")
    assert "lab.nii.gz" in one_line(ei)
    assert ref.read_bytes() == before
    with pytest.raises(ValueError):
        save_label_like(np.zeros((3, 3, 3), bool), ref, tmp_path / "o.nii.gz")
    with pytest.raises(ValueError):
        save_label_like(label == 1, ref, tmp_path / "o.png")


# --------------------------------------------------------------------------- errors


def test_error_root_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        DecathlonDataset(tmp_path / "nope")
    assert "nope" in one_line(ei)


def test_error_imagesTr_missing(tmp_path):
    (tmp_path / "T" / "labelsTr").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as ei:
        DecathlonDataset(tmp_path / "T")
    assert "imagesTr" in one_line(ei)


def test_error_imagesTr_empty(tmp_path):
    (tmp_path / "T" / "imagesTr").mkdir(parents=True)
    (tmp_path / "T" / "imagesTr" / "._x.nii.gz").write_bytes(b"junk")
    with pytest.raises(FileNotFoundError) as ei:
        DecathlonDataset(tmp_path / "T")
    assert "imagesTr" in one_line(ei) and "empty" in one_line(ei)


def test_error_image_without_label(tmp_path):
    root = make_dataset(tmp_path / "T", n=2)
    os.remove(root / "labelsTr" / "la_001.nii.gz")
    with pytest.raises(FileNotFoundError) as ei:
        DecathlonDataset(root)
    msg = one_line(ei)
    assert "la_001.nii.gz" in msg and str(root / "imagesTr") in msg and str(root / "labelsTr") in msg


def test_error_dataset_json_missing_file(tmp_path):
    root = make_dataset(tmp_path / "T", n=1)
    meta = {"training": [{"image": "./imagesTr/la_000.nii.gz", "label": "./labelsTr/la_000.nii.gz"},
                         {"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError) as ei:
        DecathlonDataset(root)
    msg = one_line(ei)
    assert "ghost.nii.gz" in msg and "dataset.json" in msg


@pytest.mark.parametrize("name", ["trunc.nii.gz", "trunc.nii"])
def test_error_truncated(tmp_path, name):
    rng = np.random.default_rng(0)
    ip = write(tmp_path / name, rng.normal(size=(32, 32, 32)).astype(np.float32))
    data = ip.read_bytes()
    ip.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as ei:
        load_case(ip)
    assert name in one_line(ei) and "truncated" in one_line(ei)
    assert isinstance(ei.value, ValueError)


def test_error_zero_byte(tmp_path):
    root = make_dataset(tmp_path / "T", n=1)
    (root / "labelsTr" / "la_000.nii.gz").write_bytes(b"")
    with pytest.raises(DataError) as ei:
        DecathlonDataset(root)[0]
    msg = one_line(ei)
    assert "la_000.nii.gz" in msg and "zero-byte" in msg


@pytest.mark.parametrize("name,content", [("junk.nii.gz", b"this is not gzip" * 40),
                                          ("junk.nii", b"plain text, not a nifti header" * 40)])
def test_error_not_nifti(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError) as ei:
        load_case(p)
    assert name in one_line(ei)


def test_error_2d_image(tmp_path):
    p = write(tmp_path / "flat.nii.gz", np.zeros((16, 16), np.float32), affine=np.eye(4))
    with pytest.raises(DataError) as ei:
        load_case(p)
    msg = one_line(ei)
    assert "flat.nii.gz" in msg and "2D" in msg


def test_error_4d_multi_volume(tmp_path):
    p = write(tmp_path / "multi.nii.gz", np.zeros((8, 8, 8, 2), np.float32))
    with pytest.raises(DataError) as ei:
        load_case(p)
    msg = one_line(ei)
    assert "multi.nii.gz" in msg and "2 volumes" in msg


def test_error_shape_mismatch(tmp_path):
    raw, label = make_volume()
    ip = write(tmp_path / "img.nii.gz", raw)
    lp = write(tmp_path / "lab.nii.gz", label[:, :, :-1])
    with pytest.raises(DataError) as ei:
        load_case(ip, lp)
    msg = one_line(ei)
    assert "img.nii.gz" in msg and "lab.nii.gz" in msg and "shape" in msg


def test_error_affine_mismatch(tmp_path):
    raw, label = make_volume()
    ip = write(tmp_path / "img.nii.gz", raw)
    lp = write(tmp_path / "lab.nii.gz", label, affine=oblique_affine(shift=(-50.0, 12.5, 80.01)))
    with pytest.raises(DataError) as ei:
        load_case(ip, lp)
    msg = one_line(ei)
    assert "img.nii.gz" in msg and "lab.nii.gz" in msg and "affine" in msg
    # within tolerance is fine
    lp2 = write(tmp_path / "lab2.nii.gz", label, affine=oblique_affine(shift=(-50.0, 12.5, 80.0002)))
    assert load_case(ip, lp2).label is not None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_nan_inf_intensities(tmp_path, bad):
    raw, _ = make_volume(ct=False)
    raw[3, 4, 5] = bad
    p = write(tmp_path / "nanimg.nii.gz", raw)
    with pytest.raises(DataError) as ei:
        load_case(p)
    msg = one_line(ei)
    assert "nanimg.nii.gz" in msg and "NaN/Inf" in msg


def test_error_non_integer_labels(tmp_path):
    raw, label = make_volume()
    ip = write(tmp_path / "img.nii.gz", raw)
    soft = label.astype(np.float32)
    soft[10, 9, 5] = 0.5
    lp = write(tmp_path / "soft.nii.gz", soft)
    with pytest.raises(DataError) as ei:
        load_case(ip, lp)
    msg = one_line(ei)
    assert "soft.nii.gz" in msg and "not integers" in msg


def test_data_errors_surface_lazily_and_via_validate(tmp_path):
    root = make_dataset(tmp_path / "T", n=2)
    (root / "imagesTr" / "la_001.nii.gz").write_bytes(b"")
    ds = DecathlonDataset(root)  # pairing is fine
    assert ds[0].name == "la_000"
    with pytest.raises(DataError) as ei:
        ds.validate()
    assert "la_001.nii.gz" in one_line(ei)
