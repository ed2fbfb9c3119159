"""One NIfTI file: reading with validation, intensity normalisation, writing labels back.

Every problem with the data is reported as one line naming the file: ``FileNotFoundError``
for missing things, :class:`DataError` (a ``ValueError``) for malformed things. Arrays keep
nibabel's voxel axis order (no reorientation); ``spacing`` follows the same order. Both
``.nii`` and ``.nii.gz`` are read. Folders in the Medical Segmentation Decathlon layout:
``svl_env.data.decathlon``; patches of volumes: ``svl_env.data.patches``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..files import chmod_like_new_file

__all__ = [
    "CHANNEL_RE",
    "Case",
    "DataError",
    "NIFTI_EXTS",
    "canon_modality",
    "check_window",
    "is_nifti_name",
    "label_mask",
    "list_nifti",
    "load_case",
    "load_nifti",
    "nifti_stem",
    "normalise_intensity",
    "one_line",
    "read_array",
    "save_label_like",
    "save_nifti_atomic",
]

AFFINE_TOL_MM = 1e-3
#: A label file with more distinct values than this is refused as "looks like an image" (a swapped
#: image/label pair); real label maps, atlases included, have far fewer classes.
MAX_LABEL_CLASSES = 1000
#: file name endings read as NIfTI (checked case-insensitively, longest first)
NIFTI_EXTS = (".nii.gz", ".nii")
#: nnU-Net channel suffix of a file stem: ``case_0000`` -> groups ``case`` ("case"), ``ch`` ("0000")
CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_MODALITIES = ("auto", "ct", "mr", "none")


class DataError(ValueError):
    """Malformed input data. The message is one line naming the file and the problem."""


@dataclass(eq=False)
class Case:
    name: str
    image: np.ndarray  # (D, H, W) float32 in [0, 1]
    label: np.ndarray | None  # (D, H, W) bool
    spacing: tuple[float, float, float]  # mm, same axis order as the arrays
    affine: np.ndarray  # (4, 4): the label file's if present, else the image's
    image_path: Path
    label_path: Path | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- helpers


def one_line(exc: BaseException, limit: int = 160) -> str:
    """``"ExcType: message"`` on one line, cut to ``limit`` characters (for DataError messages)."""
    msg = " ".join(str(exc).split())
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def nifti_stem(path: Path | str) -> str:
    """File name without ``.nii``/``.nii.gz`` (case name)."""
    name = Path(path).name
    for ext in NIFTI_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def is_nifti_name(name: str) -> bool:
    """True for a visible ``.nii`` / ``.nii.gz`` file name (hidden files such as ``._x.nii`` are not)."""
    low = name.lower()
    return not name.startswith(".") and low.endswith(NIFTI_EXTS)


def list_nifti(folder: Path | str, what: str) -> list[Path]:
    """Sorted ``.nii``/``.nii.gz`` files of ``folder`` (hidden files skipped).

    Raises FileNotFoundError (missing or empty folder) / NotADirectoryError naming ``what``."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} path is not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if is_nifti_name(p.name) and p.is_file())
    if not files:
        raise FileNotFoundError(f"{what} folder has no .nii/.nii.gz files: {folder}")
    return files


def save_nifti_atomic(img, out_path: Path) -> Path:
    """``nib.save`` through a temporary file in the same folder and a rename: a crash never
    leaves a half-written NIfTI at ``out_path``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if out_path.name.lower().endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix="." + out_path.name + ".", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        nib.save(img, tmp)
        chmod_like_new_file(tmp)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out_path


def canon_modality(modality: str) -> str:
    """``modality`` as one of ``"auto"``, ``"ct"``, ``"mr"``, ``"none"`` (``"MRI"`` -> ``"mr"``);
    ValueError otherwise."""
    m = str(modality).strip().lower()
    if m == "mri":
        m = "mr"
    if m not in _MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(_MODALITIES)}")
    return m


def check_window(ct_window: Sequence[float]) -> tuple[float, float]:
    """A CT window (low, high) in HU as two floats; ValueError unless finite with low < high."""
    lo, hi = (float(v) for v in ct_window)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"ct_window must be two finite numbers (low, high) with low < high, got {ct_window!r}")
    return lo, hi


def load_nifti(path: Path, what: str):
    """nib.load of a NIfTI ``what`` (e.g. "image", "label") with every failure turned into
    FileNotFoundError / DataError (one line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path}: {what} path is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: zero-byte file (expected a NIfTI {what})")
    try:
        img = nib.load(str(path), mmap=False)
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types for junk input
        raise DataError(
            f"{path}: not a readable NIfTI file (truncated, corrupt or another format; {one_line(exc)})"
        ) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img


def read_array(img, path: Path, what: str, *, as_float: bool) -> np.ndarray:
    """The (D, H, W) data of a loaded NIfTI ``img`` read from ``path`` (float32 with ``as_float``,
    else the on-disk dtype); trailing singleton axes dropped; DataError naming ``path`` for 2D,
    multi-volume, truncated or corrupt data."""
    _spatial_shape(img.shape, path, what)  # reject 2D / multi-volume before reading data
    try:
        if as_float:
            arr = img.get_fdata(dtype=np.float32, caching="unchanged")
        else:
            arr = np.asanyarray(img.dataobj)
        arr = np.asarray(arr)
    except MemoryError:
        raise
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError ... on truncation
        raise DataError(f"{path}: truncated or corrupt NIfTI data ({one_line(exc)})") from None
    return _to_3d(arr, path, what)


def _spatial_shape(shape: tuple, path: Path, what: str) -> tuple:
    """Shape with trailing singleton axes beyond the third dropped; 2D / multi-volume rejected."""
    orig = tuple(int(s) for s in shape)
    sh = orig
    while len(sh) > 3 and sh[-1] == 1:
        sh = sh[:-1]
    if len(sh) < 3:
        raise DataError(f"{path}: {what} is {len(sh)}D (shape {orig}); a 3D volume is required")
    if len(sh) > 3:
        n = int(np.prod(sh[3:]))
        raise DataError(
            f"{path}: {what} is {len(orig)}D with {n} volumes (shape {orig}); "
            "only single-volume 3D images are supported"
        )
    return sh


def _to_3d(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    return arr.reshape(_spatial_shape(arr.shape, path, what))


def _spacing(img, path: Path) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if len(zooms) < 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: invalid voxel spacing {zooms} in the header (must be positive)")
    return zooms  # type: ignore[return-value]


# ------------------------------------------------------------------------ intensities


def normalise_intensity(raw: np.ndarray, modality: str, ct_window=(-175.0, 250.0)) -> np.ndarray:
    """Map raw intensities to float32 in [0, 1].

    ``"ct"``: clip to ``ct_window`` (HU) and scale; ``"mr"``: clip to the 0.5/99.5
    percentiles and scale; ``"none"``: min-max; ``"auto"``: CT if ``raw.min() < -500``
    else MR. A constant volume maps to zeros.
    """
    m = canon_modality(modality)
    x = np.asarray(raw, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    if m == "auto":
        m = "ct" if float(x.min()) < -500.0 else "mr"
    if m == "ct":
        lo, hi = check_window(ct_window)
    elif m == "mr":
        lo, hi = (float(v) for v in np.percentile(x, [0.5, 99.5]))
    else:
        lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.float32)
    out = (np.clip(x, lo, hi) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------ cases


def load_case(
    image_path,
    label_path=None,
    *,
    label_value=1,
    modality="auto",
    ct_window=(-175.0, 250.0),
    name: str | None = None,
) -> Case:
    """Load one image (+ optional label) and validate it. See the module docstring."""
    m = canon_modality(modality)
    if m == "ct":
        check_window(ct_window)
    image_path = Path(image_path)
    img = load_nifti(image_path, "image")
    raw = read_array(img, image_path, "image", as_float=True)
    if not np.isfinite(raw).all():
        n_bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        raise DataError(f"{image_path}: image contains {n_bad} NaN/Inf intensities")
    spacing = _spacing(img, image_path)
    image = normalise_intensity(raw, m, ct_window)
    del raw
    affine = np.array(img.affine, dtype=np.float64)

    label = None
    if label_path is not None:
        label_path = Path(label_path)
        limg = load_nifti(label_path, "label")
        lab = read_array(limg, label_path, "label", as_float=False)
        if lab.shape != image.shape:
            raise DataError(
                f"{label_path}: label shape {lab.shape} does not match image shape {image.shape} "
                f"of {image_path}"
            )
        laff = np.array(limg.affine, dtype=np.float64)
        diff = float(np.max(np.abs(laff - affine)))
        if not diff <= AFFINE_TOL_MM:
            raise DataError(
                f"image {image_path} and label {label_path} have affines that disagree by up to "
                f"{diff:.4g} mm (tolerance {AFFINE_TOL_MM:g} mm)"
            )
        label = label_mask(lab, label_value, label_path)
        affine = laff

    if name is None:
        name = nifti_stem(label_path) if label_path is not None else nifti_stem(image_path)
    return Case(
        name=name,
        image=image,
        label=label,
        spacing=spacing,
        affine=affine,
        image_path=image_path,
        label_path=label_path,
    )


def label_mask(lab: np.ndarray, label_value, path: Path) -> np.ndarray:
    """Boolean (D, H, W) mask ``lab == label_value`` (``label_value=None``: ``lab != 0``) of a label
    array read from ``path``, after checking it is a label map: numeric, finite, non-negative
    integers, at most ``MAX_LABEL_CLASSES`` classes (else DataError naming ``path``)."""
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    elif not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.floating)):
        raise DataError(f"{path}: label data type {lab.dtype} is not numeric")
    if np.issubdtype(lab.dtype, np.floating):
        finite = np.isfinite(lab)
        if not finite.all():
            raise DataError(f"{path}: label contains NaN/Inf values")
        frac = lab != np.round(lab)
        if frac.any():
            bad = float(lab[frac].flat[0])
            raise DataError(f"{path}: label values are not integers (e.g. {bad:g})")
    if lab.size:
        lo, hi = lab.min(), lab.max()
        if lo < 0:
            raise DataError(f"{path}: label contains negative values (min {lo:g}); "
                            "a label map holds non-negative integer class ids")
        if hi >= MAX_LABEL_CLASSES:
            n = len(np.unique(lab))
            if n > MAX_LABEL_CLASSES:
                raise DataError(f"{path}: label has {n} distinct values (max {hi:g}): it looks like an image, "
                                f"not a label map (more than {MAX_LABEL_CLASSES} classes)")
    if label_value is None:
        return lab != 0
    return lab == label_value

# ---------------------------------------------------------------------------- writing


def save_label_like(mask: np.ndarray, reference_path, out_path, dtype=None) -> Path:
    """Write ``mask`` with the reference file's affine and header.

    ``reference_path`` is a label (refined labels keep its on-disk dtype, ``dtype=None``) or an
    image (segmentations of new images: pass ``dtype=np.uint8``). Labels are stored unscaled
    (slope 1, intercept 0), whatever scaling the reference carried. The file is written to a
    temporary name in the destination folder and moved into place with ``os.replace``
    (atomic). ``out_path`` must end in ``.nii`` / ``.nii.gz`` and must not be the reference file
    (inputs are never overwritten: ``ValueError``); values that do not fit the dtype raise
    ``ValueError``.
    """
    ref_path = Path(reference_path)
    out_path = Path(out_path)
    if not out_path.name.lower().endswith(NIFTI_EXTS) or out_path.name.startswith("."):
        raise ValueError(f"{out_path}: output name must end in .nii or .nii.gz")
    same = out_path.resolve() == ref_path.resolve()
    if not same and out_path.exists() and ref_path.exists():
        try:
            same = os.path.samefile(out_path, ref_path)
        except OSError:
            pass
    if same:
        raise ValueError(f"{out_path}: refusing to overwrite the reference file {ref_path.name} "
                         "(inputs are never overwritten)")

    ref = load_nifti(ref_path, "reference")
    ref_shape = tuple(int(s) for s in ref.shape)
    spatial = _spatial_shape(ref_shape, ref_path, "reference")
    m = np.asarray(mask)
    if m.shape != spatial:
        raise ValueError(f"{out_path}: mask shape {m.shape} does not match reference {ref_path} shape {spatial}")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    dtype = np.dtype(ref.get_data_dtype() if dtype is None else dtype)
    if np.issubdtype(dtype, np.integer) and m.size:
        info = np.iinfo(dtype)
        lo, hi = m.min(), m.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"{out_path}: mask values [{lo}, {hi}] do not fit the on-disk dtype {dtype}")
    data = m.astype(dtype).reshape(ref_shape)

    img = type(ref)(data, ref.affine, header=ref.header.copy())
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    return save_nifti_atomic(img, out_path)
