"""Tests of the procedural phantom generator (svl_env.data.phantom): contract, character, difficulty."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from svl_env.data.phantom import DEFAULT_FAMILIES, FAMILIES, MODALITIES, generate_phantoms

SHAPE = (32, 32, 32)
FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity: the strict reading of "separate"


def _keys(n, seed=0):
    return torch.arange(n, dtype=torch.int64) * 7919 + 12345 + seed


@pytest.mark.parametrize("shape", [(16, 16, 16), (24, 40, 32), (17, 19, 23)])
def test_shapes_dtypes_range(shape):
    img, truth = generate_phantoms(_keys(6), shape)
    assert img.shape == (6, *shape) and truth.shape == (6, *shape)
    assert img.dtype == torch.float32 and truth.dtype == torch.bool
    assert img.device == truth.device == torch.device("cpu")
    assert torch.isfinite(img).all()
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert truth.flatten(1).any(1).all(), "a truth mask is empty"


def test_64_cube_and_structure_scales_with_shape():
    _, small = generate_phantoms(_keys(4), (16, 16, 16), families=("blob",))
    _, large = generate_phantoms(_keys(4), (64, 64, 64), families=("blob",))
    # same keys, 4x the side: the organ is ~4x as thick, the foreground fraction comparable
    e_small = np.mean([ndi.distance_transform_edt(np.pad(t, 1)).max() for t in small.numpy()])
    e_large = np.mean([ndi.distance_transform_edt(np.pad(t, 1)).max() for t in large.numpy()])
    assert 2.5 < e_large / e_small < 6
    f_small, f_large = small.float().mean().item(), large.float().mean().item()
    assert 0.5 < f_large / f_small < 2


def test_determinism_same_key_same_output():
    a = generate_phantoms(_keys(5), SHAPE)
    b = generate_phantoms(_keys(5), SHAPE)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = generate_phantoms(_keys(5, seed=1), SHAPE)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("shape", [(24, 40, 32), (17, 19, 23)])
def test_row_depends_only_on_its_key(shape):
    keys = torch.tensor([5, 123456, 77, 2**31 - 1, 0, 9, 10, 11, 12, 13, 14], dtype=torch.int64)
    img, truth = generate_phantoms(keys, shape)
    for b in range(len(keys)):
        i1, t1 = generate_phantoms(keys[b: b + 1], shape)
        assert torch.equal(i1[0], img[b]), f"row {b}: image differs from the single-key run"
        assert torch.equal(t1[0], truth[b]), f"row {b}: truth differs from the single-key run"
    perm = torch.tensor([3, 0, 7, 1])  # another batch composition and order
    i2, t2 = generate_phantoms(keys[perm], shape)
    assert torch.equal(i2, img[perm]) and torch.equal(t2, truth[perm])


def test_fraction_bounds_over_many_keys():
    _, truth = generate_phantoms(_keys(32), SHAPE)
    frac = truth.float().mean((1, 2, 3))
    assert (frac > 0.02).all() and (frac < 0.40).all(), frac
    assert ((frac >= 0.03) & (frac <= 0.35)).float().mean() >= 0.9, frac


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_can_be_produced(family):
    img, truth = generate_phantoms(_keys(8), SHAPE, families=(family,))
    assert torch.isfinite(img).all()
    frac = truth.float().mean((1, 2, 3))
    assert (frac > 0.02).all() and (frac < 0.40).all(), frac


def test_default_families_are_the_older_four():
    # seeded results made before ``folded`` existed must not change: it is opt-in
    assert DEFAULT_FAMILIES == ("blob", "tubular", "multi", "hollow") and set(DEFAULT_FAMILIES) < set(FAMILIES)
    a = generate_phantoms(_keys(6), (16, 16, 16))
    b = generate_phantoms(_keys(6), (16, 16, 16), families=DEFAULT_FAMILIES)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("shape", [(24, 40, 32), (17, 19, 23)])
def test_folded_row_depends_only_on_its_key(shape):
    keys = torch.tensor([5, 123456, 77, 2**31 - 1, 0, 9, 10, 11, 12, 13, 14], dtype=torch.int64)
    fams = ("folded", "hollow", "blob")  # mixed batches: folded and hollow rows share the inner-tissue path
    for families in (("folded",), fams):
        img, truth = generate_phantoms(keys, shape, families=families)
        for b in range(len(keys)):
            i1, t1 = generate_phantoms(keys[b: b + 1], shape, families=families)
            assert torch.equal(i1[0], img[b]) and torch.equal(t1[0], truth[b]), f"{families} row {b}"
        perm = torch.tensor([3, 0, 7, 1])
        i2, t2 = generate_phantoms(keys[perm], shape, families=families)
        assert torch.equal(i2, img[perm]) and torch.equal(t2, truth[perm])


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 16, 16), (24, 40, 32), (32, 32, 64)])
def test_folded_is_a_thin_non_empty_ribbon(shape):
    _, truth = generate_phantoms(_keys(12), shape, families=("folded",))
    _, blob = generate_phantoms(_keys(12), shape, families=("blob",))
    frac = truth.float().mean((1, 2, 3))
    assert (frac > 0.02).all() and (frac < 0.40).all(), frac
    assert ((frac >= 0.03) & (frac <= 0.35)).float().mean() >= 0.9, frac

    def kept(t):  # fraction of the foreground that survives an erosion by 2 voxels
        return ndi.binary_erosion(t, iterations=2).sum() / t.sum()

    k_fold = np.array([kept(t) for t in truth.numpy()])
    k_blob = np.array([kept(t) for t in blob.numpy()])
    assert k_fold.mean() < 0.1 and k_fold.max() < 0.25, k_fold  # a sheet, not a solid
    assert k_blob.mean() > max(0.15, 3 * k_fold.mean()), k_blob  # (the check can tell: a solid organ keeps more)


def test_folded_intensity_threshold_is_not_enough():
    # the core the ribbon wraps is its own tissue, near the ribbon's intensity (MR: brighter or
    # darker), and not foreground: one threshold takes both tissues or neither
    img, truth = generate_phantoms(_keys(16), (32, 32, 32), families=("folded",), modalities=("mr",))
    dice = _best_threshold_dice(img, truth).numpy()
    assert dice.mean() < 0.7, dice
    assert dice.mean() > 0.2, dice


def test_blob_is_one_thick_organ():
    _, truth = generate_phantoms(_keys(12), SHAPE, families=("blob",))
    for t in truth.numpy():
        lab, n = ndi.label(t, structure=FULL)
        assert np.bincount(lab.ravel())[1:].max() >= 0.9 * t.sum()
        assert ndi.distance_transform_edt(np.pad(t, 1)).max() >= 5.0  # solid, not thin


def test_tubular_is_thin_and_long():
    _, truth = generate_phantoms(_keys(12), SHAPE, families=("tubular",))
    for t in truth.numpy():
        assert ndi.distance_transform_edt(np.pad(t, 1)).max() <= 5.5  # radius ~1.5-4 voxels
        lab, _ = ndi.label(t, structure=FULL)
        biggest = np.argmax(np.bincount(lab.ravel())[1:]) + 1
        extent = max(s.stop - s.start for s in ndi.find_objects(lab)[biggest - 1])
        assert extent >= 0.6 * SHAPE[0]  # runs across the patch


def test_multi_has_separate_components():
    _, truth = generate_phantoms(_keys(16), SHAPE, families=("multi",))
    for t in truth.numpy():
        assert ndi.label(t, structure=FULL)[1] >= 2


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 16, 16), (24, 40, 32)])
def test_hollow_has_enclosed_cavity(shape):
    _, truth = generate_phantoms(_keys(12), shape, families=("hollow",))
    for t in truth.numpy():
        assert ndi.binary_fill_holes(t).sum() > t.sum()


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_modality(modality):
    img, truth = generate_phantoms(_keys(8), SHAPE, modalities=(modality,))
    assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    sat = (img >= 1.0).float().mean((1, 2, 3))
    if modality == "mr":  # percentile-normalised: ~0.5 % clipped bright, whatever the bias
        assert ((sat > 0.001) & (sat < 0.02)).all(), sat
    other = generate_phantoms(_keys(8), SHAPE, modalities=tuple(m for m in MODALITIES if m != modality))
    assert torch.equal(truth, other[1])  # modality changes the look, never the geometry
    assert not torch.equal(img, other[0])


def _best_threshold_dice(img: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B,) best Dice of one global intensity threshold per image, either polarity.

    Every cut point of the sorted intensities is tried (a superset of a quantile search):
    predicting the k brightest (or darkest) voxels gives Dice 2 TP_k / (k + |truth|).
    """
    x, t = img.flatten(1), truth.flatten(1)
    k = torch.arange(1, x.shape[1] + 1, dtype=torch.float64)
    n_true = t.sum(1, keepdim=True).double()
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    for descending in (True, False):
        order = torch.sort(x, dim=1, descending=descending).indices
        tp = torch.gather(t, 1, order).double().cumsum(1)
        best = torch.maximum(best, (2 * tp / (k + n_true)).amax(1))
    return best


def test_intensity_threshold_is_not_enough():
    img, truth = generate_phantoms(_keys(32), SHAPE)
    dice = _best_threshold_dice(img, truth).numpy()
    assert dice.mean() < 0.8, dice
    assert dice.max() < 0.98, dice
    assert dice.mean() > 0.2, dice  # ... but the structure is visible, not pure noise


def test_empty_batch_and_bad_arguments():
    img, truth = generate_phantoms(torch.zeros(0, dtype=torch.int64), SHAPE)
    assert img.shape == (0, *SHAPE) and truth.shape == (0, *SHAPE)
    with pytest.raises(ValueError):
        generate_phantoms(_keys(1), (4, 32, 32))
    with pytest.raises(ValueError):
        generate_phantoms(_keys(1), SHAPE, families=("sphere",))
    with pytest.raises(ValueError):
        generate_phantoms(_keys(1), SHAPE, modalities=())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_contract():
    keys = _keys(4).cuda()
    img, truth = generate_phantoms(keys, (24, 40, 32))
    assert img.is_cuda and truth.is_cuda
    assert img.min() >= 0 and img.max() <= 1 and truth.flatten(1).any(1).all()
    i1, t1 = generate_phantoms(keys[2:3], (24, 40, 32))
    assert torch.equal(i1[0], img[2]) and torch.equal(t1[0], truth[2])
