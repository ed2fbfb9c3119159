"""Medical Segmentation Decathlon style NIfTI folders: pairing images with labels, lazy loading.

Layout (``root`` is the task folder, e.g. ``Task02_Heart``)::

    root/imagesTr/la_003.nii.gz      root/labelsTr/la_003.nii.gz
    root/imagesTs/la_001.nii.gz      (root/labelsTs/la_001.nii.gz, optional)
    root/dataset.json                (optional; its "training"/"test" lists win for pairing)

nnU-Net's channel suffix is accepted: ``imagesTr/case_0000.nii.gz`` pairs with
``labelsTr/case.nii.gz`` and the case is named ``case``. Only channel ``_0000`` is used;
sibling ``_0001``... channel files are skipped. Hidden files (``._*``, ``.DS_Store``) are
ignored. Both ``.nii`` and ``.nii.gz`` are read; files are read and validated by ``svl_env.data.nifti.load_case``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .nifti import (CHANNEL_RE, NIFTI_EXTS, Case, DataError, canon_modality, check_window, is_nifti_name, load_case,
                    nifti_stem, one_line)

__all__ = ["DecathlonDataset"]


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

        m = canon_modality(modality)
        if m == "ct":
            check_window(self.ct_window)
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
            raise DataError(f"{p}: not valid JSON ({one_line(exc)})") from None
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
        alt = p.with_name(nifti_stem(p) + "_0000" + ext)
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
        files = sorted(p for p in d.iterdir() if is_nifti_name(p.name) and p.is_file())
        if not files:
            raise FileNotFoundError(f"image folder is empty (no .nii/.nii.gz files): {d}")
        return files

    def _find_label(self, image_path: Path) -> tuple[str, Path | None]:
        """(case name, label path or None) for an image, trying exact name then '_0000' strip."""
        stem = nifti_stem(image_path)
        candidates = [stem]
        mt = CHANNEL_RE.match(stem)
        if mt and mt.group("ch") == "0000":
            candidates.append(mt.group("case"))
        if self._lab_dir.is_dir():
            for cand in candidates:
                for ext in NIFTI_EXTS:
                    lp = self._lab_dir / (cand + ext)
                    if lp.is_file():
                        return cand, lp
        return candidates[-1], None

    @staticmethod
    def _case_name(image_path: Path, label_path: Path | None) -> str:
        if label_path is not None:
            return nifti_stem(label_path)
        stem = nifti_stem(image_path)
        mt = CHANNEL_RE.match(stem)
        return mt.group("case") if mt and mt.group("ch") == "0000" else stem

    def _pairs_from_folders(self, labels_required: bool):
        files = self._list_images()
        stems = {nifti_stem(p) for p in files}
        pairs = []
        for ip in files:
            stem = nifti_stem(ip)
            mt = CHANNEL_RE.match(stem)
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
