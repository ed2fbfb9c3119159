"""Medical Segmentation Decathlon style NIfTI folders: reading, pairing, patches, writing back.

Layout (``root`` is the task folder, e.g. ``Task02_Heart``)::

    root/imagesTr/la_003.nii.gz      root/labelsTr/la_003.nii.gz
    root/imagesTs/la_001.nii.gz      (root/labelsTs/la_001.nii.gz, optional)
    root/dataset.json                (optional; its "training"/"test" lists win for pairing)

nnU-Net's channel suffix is accepted: ``imagesTr/case_0000.nii.gz`` pairs with
``labelsTr/case.nii.gz`` and the case is named ``case``. Only channel ``_0000`` is used;
sibling ``_0001``... channel files are skipped. Hidden files (``._*``, ``.DS_Store``) are
ignored. Both ``.nii`` and ``.nii.gz`` are read.

Every problem with the data is reported as one line naming the file: ``FileNotFoundError``
for missing things, :class:`DataError` (a ``ValueError``) for malformed things. Arrays keep
nibabel's voxel axis order (no reorientation); ``spacing`` follows the same order.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "Case",
    "DataError",
    "DecathlonDataset",
    "crop",
    "load_case",
    "normalise_intensity",
    "pad_to",
    "patch_origin",
    "save_label_like",
]

AFFINE_TOL_MM = 1e-3
#: A label file with more distinct values than this is refused as "looks like an image" (a swapped
#: image/label pair); real label maps, atlases included, have far fewer classes.
MAX_LABEL_CLASSES = 1000
_NIFTI_EXTS = (".nii.gz", ".nii")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
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


def _one_line(exc: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _stem(path: Path | str) -> str:
    name = Path(path).name
    for ext in _NIFTI_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _is_nifti_name(name: str) -> bool:
    low = name.lower()
    return not name.startswith(".") and low.endswith(_NIFTI_EXTS)


def nifti_stem(path: Path | str) -> str:
    """File name without ``.nii``/``.nii.gz`` (case name)."""
    return _stem(path)


def list_nifti(folder: Path | str, what: str) -> list[Path]:
    """Sorted ``.nii``/``.nii.gz`` files of ``folder`` (hidden files skipped).

    Raises FileNotFoundError (missing or empty folder) / NotADirectoryError naming ``what``."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} path is not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if _is_nifti_name(p.name) and p.is_file())
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
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out_path


def _canon_modality(modality: str) -> str:
    m = str(modality).strip().lower()
    if m == "mri":
        m = "mr"
    if m not in _MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(_MODALITIES)}")
    return m


def _check_window(ct_window: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in ct_window)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"ct_window must be two finite numbers (low, high) with low < high, got {ct_window!r}")
    return lo, hi


def _load_nifti(path: Path, what: str):
    """nib.load with every failure turned into FileNotFoundError / DataError (one line)."""
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
            f"{path}: not a readable NIfTI file (truncated, corrupt or another format; {_one_line(exc)})"
        ) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img


def _read_array(img, path: Path, what: str, *, as_float: bool) -> np.ndarray:
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
        raise DataError(f"{path}: truncated or corrupt NIfTI data ({_one_line(exc)})") from None
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
    m = _canon_modality(modality)
    x = np.asarray(raw, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    if m == "auto":
        m = "ct" if float(x.min()) < -500.0 else "mr"
    if m == "ct":
        lo, hi = _check_window(ct_window)
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
    m = _canon_modality(modality)
    if m == "ct":
        _check_window(ct_window)
    image_path = Path(image_path)
    img = _load_nifti(image_path, "image")
    raw = _read_array(img, image_path, "image", as_float=True)
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
        limg = _load_nifti(label_path, "label")
        lab = _read_array(limg, label_path, "label", as_float=False)
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
        label = _label_mask(lab, label_value, label_path)
        affine = laff

    if name is None:
        name = _stem(label_path) if label_path is not None else _stem(image_path)
    return Case(
        name=name,
        image=image,
        label=label,
        spacing=spacing,
        affine=affine,
        image_path=image_path,
        label_path=label_path,
    )


def _label_mask(lab: np.ndarray, label_value, path: Path) -> np.ndarray:
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


# ---------------------------------------------------------------------------- dataset


class DecathlonDataset:
    """Lazily loaded Decathlon-style folder.

    ``split="train"`` pairs ``imagesTr/`` with ``labelsTr/`` (missing labels raise
    ``FileNotFoundError`` when ``require_labels``); ``split="test"`` reads ``imagesTs/`` with
    labels from ``labelsTs/`` when present (always optional). Construction checks the file
    pairing only; each file is read and validated when its case is first accessed (call
    :meth:`validate` to check everything up front).
    """

    def __init__(
        self,
        root,
        *,
        split="train",
        label_value=1,
        modality="auto",
        ct_window=(-175.0, 250.0),
        require_labels=True,
        cache=True,
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {root}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = root
        self.split = split
        self.label_value = label_value
        self.ct_window = tuple(float(v) for v in ct_window)
        self.require_labels = bool(require_labels)
        self.cache = bool(cache)
        self.dataset_json: dict | None = self._read_json()

        m = _canon_modality(modality)
        if m == "ct":
            _check_window(self.ct_window)
        if m == "auto":
            m = self._json_modality() or "auto"
        self.modality = m  # resolved: "ct" / "mr" / "none", or "auto" (per case, by raw min)

        img_dir, lab_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
        self._img_dir = root / img_dir
        self._lab_dir = root / lab_dir
        labels_required = self.require_labels and split == "train"

        pairs = self._pairs_from_json(labels_required)
        if pairs is None:
            pairs = self._pairs_from_folders(labels_required)

        seen: dict[str, Path] = {}
        for name, ip, _ in pairs:
            if name in seen:
                raise DataError(f"{ip}: case name {name!r} is also used by {seen[name]}")
            seen[name] = ip
        self.names: list[str] = [p[0] for p in pairs]
        self.image_paths: list[Path] = [p[1] for p in pairs]
        self.label_paths: list[Path | None] = [p[2] for p in pairs]
        self._cache: dict[int, Case] = {}

    # -- construction helpers

    def _read_json(self) -> dict | None:
        p = self.root / "dataset.json"
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except Exception as exc:
            raise DataError(f"{p}: not valid JSON ({_one_line(exc)})") from None
        if not isinstance(data, dict):
            raise DataError(f"{p}: expected a JSON object at the top level")
        return data

    def _json_modality(self) -> str | None:
        data = self.dataset_json or {}
        mod = data.get("modality", data.get("channel_names"))
        if isinstance(mod, dict):
            mod = mod.get("0", next(iter(mod.values()), None))
        elif isinstance(mod, list):
            mod = mod[0] if mod else None
        if not isinstance(mod, str) or not mod.strip():
            return None
        return "ct" if mod.strip().upper() == "CT" else "mr"

    def _resolve(self, rel: str) -> Path:
        return Path(os.path.normpath(self.root / rel))

    def _with_channel_fallback(self, p: Path) -> Path:
        """nnU-Net v1 dataset.json names 'case.nii.gz' while the file is 'case_0000.nii.gz'."""
        if p.exists():
            return p
        ext = ".nii.gz" if p.name.lower().endswith(".nii.gz") else ".nii"
        alt = p.with_name(_stem(p) + "_0000" + ext)
        return alt if alt.exists() else p

    def _pairs_from_json(self, labels_required: bool):
        data = self.dataset_json
        key = "training" if self.split == "train" else "test"
        if not data or not isinstance(data.get(key), list) or not data[key]:
            return None
        jpath = self.root / "dataset.json"
        pairs, missing = [], []
        for entry in data[key]:
            if isinstance(entry, str):
                img_rel, lab_rel = entry, None
            elif isinstance(entry, dict) and isinstance(entry.get("image"), str):
                img_rel = entry["image"]
                lab_rel = entry.get("label") if isinstance(entry.get("label"), str) else None
            else:
                raise DataError(f"{jpath}: malformed {key!r} entry {entry!r} (expected an image path)")
            ip = self._with_channel_fallback(self._resolve(img_rel))
            if not ip.is_file():
                missing.append(str(ip))
                continue
            if lab_rel is not None:
                lp = self._resolve(lab_rel)
                if not lp.is_file():
                    missing.append(str(lp))
                    continue
            else:
                lp = self._find_label(ip)[1]
                if lp is None and labels_required:
                    expected = self._lab_dir / (self._case_name(ip, None) + ".nii.gz")
                    raise FileNotFoundError(f"image {ip} has no label; expected {expected}")
            pairs.append((self._case_name(ip, lp), ip, lp))
        if missing:
            shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            raise FileNotFoundError(f"{jpath} names {len(missing)} missing file(s): {shown}")
        return pairs

    def _list_images(self) -> list[Path]:
        d = self._img_dir
        if not d.is_dir():
            raise FileNotFoundError(f"image folder not found: {d}")
        files = sorted(p for p in d.iterdir() if _is_nifti_name(p.name) and p.is_file())
        if not files:
            raise FileNotFoundError(f"image folder is empty (no .nii/.nii.gz files): {d}")
        return files

    def _find_label(self, image_path: Path) -> tuple[str, Path | None]:
        """(case name, label path or None) for an image, trying exact name then '_0000' strip."""
        stem = _stem(image_path)
        candidates = [stem]
        mt = _CHANNEL_RE.match(stem)
        if mt and mt.group("ch") == "0000":
            candidates.append(mt.group("case"))
        if self._lab_dir.is_dir():
            for cand in candidates:
                for ext in _NIFTI_EXTS:
                    lp = self._lab_dir / (cand + ext)
                    if lp.is_file():
                        return cand, lp
        return candidates[-1], None

    @staticmethod
    def _case_name(image_path: Path, label_path: Path | None) -> str:
        if label_path is not None:
            return _stem(label_path)
        stem = _stem(image_path)
        mt = _CHANNEL_RE.match(stem)
        return mt.group("case") if mt and mt.group("ch") == "0000" else stem

    def _pairs_from_folders(self, labels_required: bool):
        files = self._list_images()
        stems = {_stem(p) for p in files}
        pairs = []
        for ip in files:
            stem = _stem(ip)
            mt = _CHANNEL_RE.match(stem)
            name, lp = self._find_label(ip)
            # extra nnU-Net channels (case_0001 next to case_0000): use channel 0 only
            if lp is None and mt and mt.group("ch") != "0000" and (mt.group("case") + "_0000") in stems:
                continue
            if lp is None and labels_required:
                expected = self._lab_dir / (name + ".nii.gz")
                raise FileNotFoundError(f"image {ip} has no label; expected {expected}")
            pairs.append((name, ip, lp))
        return pairs

    # -- access

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Case:
        n = len(self.names)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"case index {i} out of range for {n} cases")
        if i in self._cache:
            return self._cache[i]
        case = load_case(
            self.image_paths[i],
            self.label_paths[i],
            label_value=self.label_value,
            modality=self.modality,
            ct_window=self.ct_window,
            name=self.names[i],
        )
        if self.cache:
            self._cache[i] = case
        return case

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def validate(self) -> None:
        """Load every case once (raising the first DataError); honours ``cache``."""
        for i in range(len(self)):
            self[i]

    def __repr__(self) -> str:
        return f"DecathlonDataset(root={str(self.root)!r}, split={self.split!r}, cases={len(self)})"


# ---------------------------------------------------------------------------- patches


def _triple(x, what: str) -> tuple[int, int, int]:
    t = tuple(int(v) for v in x)
    if len(t) != 3:
        raise ValueError(f"{what} must have 3 entries, got {x!r}")
    return t  # type: ignore[return-value]


def patch_origin(
    case_shape, patch_shape, label: np.ndarray | None, u: np.ndarray, fg_prob: float = 0.66
) -> tuple[int, int, int]:
    """Foreground-biased patch origin (pure function of ``u``).

    With ``u[0] < fg_prob`` and a non-empty ``label`` the patch is centred (as far as the
    volume allows) on the foreground voxel ``floor(u[1] * n_fg)`` in C order; otherwise the
    origin is uniform, axis ``a`` drawn from ``u[1 + a]``. Along axes where the volume is not
    larger than the patch the origin is 0 (the caller pads, see :func:`pad_to` / :func:`crop`).
    """
    shape = _triple(case_shape, "case_shape")
    patch = _triple(patch_shape, "patch_shape")
    if min(patch) < 1:
        raise ValueError(f"patch_shape must be positive, got {patch}")
    u = np.asarray(u, dtype=np.float64).ravel()
    if u.size < 4:
        raise ValueError(f"patch_origin needs at least 4 uniform numbers, got {u.size}")
    max_o = [max(s - p, 0) for s, p in zip(shape, patch)]

    if label is not None and float(u[0]) < fg_prob:
        lab = np.asarray(label)
        if lab.shape != shape:
            raise ValueError(f"label shape {lab.shape} does not match case_shape {shape}")
        fg = np.flatnonzero(lab)
        if fg.size:
            k = min(int(float(u[1]) * fg.size), fg.size - 1)
            centre = np.unravel_index(int(fg[max(k, 0)]), shape)
            return tuple(
                int(min(max(int(c) - p // 2, 0), m)) for c, p, m in zip(centre, patch, max_o)
            )  # type: ignore[return-value]
    return tuple(
        int(min(max(int(float(u[1 + a]) * (max_o[a] + 1)), 0), max_o[a])) for a in range(3)
    )  # type: ignore[return-value]


def pad_to(arr: np.ndarray, patch_shape, value=0) -> np.ndarray:
    """Pad the last three axes at their end up to at least ``patch_shape`` (constant ``value``)."""
    arr = np.asarray(arr)
    patch = _triple(patch_shape, "patch_shape")
    if arr.ndim < 3:
        raise ValueError(f"pad_to needs an array with >= 3 dims, got shape {arr.shape}")
    spatial = arr.shape[-3:]
    if all(s >= p for s, p in zip(spatial, patch)):
        return arr
    widths = [(0, 0)] * (arr.ndim - 3) + [(0, max(p - s, 0)) for s, p in zip(spatial, patch)]
    return np.pad(arr, widths, mode="constant", constant_values=value)


def crop(arr, origin, patch_shape, *, mode: str = "constant", value=0) -> np.ndarray:
    """``arr[..., o0:o0+p0, o1:o1+p1, o2:o2+p2]`` of exactly ``patch_shape`` (a copy).

    Where the volume ends before the patch does, the patch is padded at the end with
    ``value`` (``mode="constant"``, default 0) or by repeating the edge (``mode="edge"``).
    """
    arr = np.asarray(arr)
    o = _triple(origin, "origin")
    patch = _triple(patch_shape, "patch_shape")
    if arr.ndim < 3:
        raise ValueError(f"crop needs an array with >= 3 dims, got shape {arr.shape}")
    if min(o) < 0:
        raise ValueError(f"origin must be non-negative, got {o}")
    if mode not in ("constant", "edge"):
        raise ValueError(f"mode must be 'constant' or 'edge', got {mode!r}")
    sl = tuple(slice(oa, oa + pa) for oa, pa in zip(o, patch))
    out = arr[(Ellipsis,) + sl]
    got = out.shape[-3:]
    if got == patch:
        return out.copy()
    widths = [(0, 0)] * (arr.ndim - 3) + [(0, p - g) for g, p in zip(got, patch)]
    if mode == "edge" and min(got) > 0:
        return np.pad(out, widths, mode="edge")
    return np.pad(out, widths, mode="constant", constant_values=value)


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
    if not out_path.name.lower().endswith(_NIFTI_EXTS) or out_path.name.startswith("."):
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

    ref = _load_nifti(ref_path, "reference")
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
