"""Training data of the staged pipeline: a Decathlon folder with noisy ``labelsTr``, in memory.

Only ``DIR/imagesTr`` and ``DIR/labelsTr`` are read (``svl_env.data.decathlon.DecathlonDataset``:
validation, intensity normalisation, one label value of multi-label files). The given labels are
kept unchanged in ``given``; ``current`` holds the training labels of the current round (the
given ones until the label agents refine them). Patches are cut by ``svl_env``'s
``CaseSource`` (foreground-biased origins, padding of volumes smaller than a patch) from the
*current* labels, so every consumer -- the segmentation loss, the label-agent environment, the
co-teaching networks -- samples the same distribution.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from svl_env import rng
from svl_env.data.decathlon import DecathlonDataset
from svl_env.data.nifti import Case, DataError
from svl_env.data.sources import CaseSource

__all__ = ["TrainingSet", "load_training_set", "Augment"]


class Augment:
    """A random flip of each spatial axis and a random permutation of the axes (cubic patches),
    drawn from a seeded generator; ``apply`` / ``invert`` act on the last three dims of any
    tensor, so images, masks, per-voxel actions and reward maps stay aligned."""

    def __init__(self, seed: int, cubic: bool = True, enabled: bool = True):
        g = np.random.default_rng(int(seed))
        self.flips = [i for i in range(3) if g.random() < 0.5] if enabled else []
        self.perm = list(g.permutation(3)) if (enabled and cubic) else [0, 1, 2]
        self.inv = list(np.argsort(self.perm))

    @property
    def identity(self) -> bool:
        return not self.flips and self.perm == [0, 1, 2]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        lead = x.dim() - 3
        if self.flips:
            x = x.flip([lead + i for i in self.flips])
        return x.permute(*range(lead), *[lead + int(p) for p in self.perm])

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        lead = x.dim() - 3
        x = x.permute(*range(lead), *[lead + int(p) for p in self.inv])
        if self.flips:
            x = x.flip([lead + i for i in self.flips])
        return x


class TrainingSet:
    """Cases of a training folder: images, the given labels, the current labels.

    Attributes: ``names``, ``images`` (list of (D, H, W) float32 in [0, 1]), ``given`` and
    ``current`` (lists of (D, H, W) bool), ``consensus`` (None, or the cross-fit stage's
    out-of-fold probabilities, (D, H, W) float32 per case), ``cases`` (``nifti.Case``, label = the given one),
    ``label_paths`` (the given label files: reference for writing refined labels), ``modality``
    and ``ct_window`` (the intensity normalisation the images were read with: "ct", "mr",
    "none", or "auto" = per case, CT when the raw minimum is below -500; see
    ``svl_env.data.nifti.normalise_intensity``).
    """

    def __init__(self, cases: list[Case], fg_prob: float = 0.66, modality: str = "auto",
                 ct_window=(-175.0, 250.0)):
        if not cases:
            raise DataError("no training cases")
        self.cases = list(cases)
        self.names = [c.name for c in cases]
        self.images = [c.image for c in cases]
        self.given = [np.asarray(c.label, dtype=bool) for c in cases]
        self.current = list(self.given)  # the same arrays: never modified in place
        self.refined = False  # True once set_current replaced them
        self.label_paths = [c.label_path for c in cases]
        self.fg_prob = float(fg_prob)
        self.modality = str(modality)
        self.ct_window = tuple(float(v) for v in ct_window)
        self._source: CaseSource | None = None
        self._given_source: CaseSource | None = None
        # the out-of-fold foreground probability of every case (``agents.staged.crossfit``),
        # once a cross-fit stage has made it: the label agents' consensus in place of the
        # segmentation decoder's own prediction; None: the decoder's
        self.consensus: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def subset(self, indices) -> "TrainingSet":
        """The cases ``indices`` (their given labels) as a training set of their own."""
        return TrainingSet([self.cases[i] for i in indices], fg_prob=self.fg_prob, modality=self.modality,
                           ct_window=self.ct_window)

    def set_current(self, labels: list[np.ndarray]) -> None:
        """Replace the training labels (same shapes); patch sources are rebuilt."""
        if len(labels) != len(self.cases):
            raise ValueError(f"expected {len(self.cases)} label volumes, got {len(labels)}")
        for c, lab in zip(self.cases, labels):
            if lab.shape != c.image.shape:
                raise ValueError(f"{c.name}: label shape {lab.shape} != image shape {c.image.shape}")
        self.current = [np.asarray(lab, dtype=bool) for lab in labels]
        self.refined = True
        self._source = None

    def source(self, labels: str = "current") -> CaseSource:
        """A ``CaseSource`` over the ``"current"`` or the ``"given"`` labels (``labels="clean"``
        from the environment's view: they are its reward target G; the clean truth is never known
        to the pipeline)."""
        if labels == "given":
            if self._given_source is None:
                cases = [dataclasses.replace(c, label=lab) for c, lab in zip(self.cases, self.given)]
                self._given_source = CaseSource(cases, labels="clean", fg_prob=self.fg_prob)
            return self._given_source
        if labels != "current":
            raise ValueError(f"labels must be 'current' or 'given', got {labels!r}")
        if self._source is None:
            cases = [dataclasses.replace(c, label=lab) for c, lab in zip(self.cases, self.current)]
            self._source = CaseSource(cases, labels="clean", fg_prob=self.fg_prob)
        return self._source

    def crop_like_given(self, keys: torch.Tensor, patch_shape, labels: list[np.ndarray]) -> torch.Tensor:
        """The patches ``self.source("given").sample(keys, patch_shape)`` cut, taken from ``labels``
        (e.g. the current labels) instead: same cases, same origins. (B, D, H, W) float32."""
        from svl_env.data.patches import crop, patch_origin
        from svl_env.data.sources import TAG_CASE

        u = rng.params(keys, TAG_CASE, 5).cpu().numpy().astype(np.float64)
        out = []
        for row in u:  # mirrors CaseSource.sample: case choice and fg-biased origin from the given labels
            i = min(int(row[0] * len(self.cases)), len(self.cases) - 1)
            origin = patch_origin(self.images[i].shape, patch_shape, self.given[i], row[1:], self.fg_prob)
            out.append(crop(labels[i], origin, patch_shape))
        return torch.as_tensor(np.stack(out).astype(np.float32), device=keys.device)

    def sample(self, seed: int, batch: int, patch_shape, device="cpu",
               augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of patches: image (B, 1, D, H, W) float32, current label (B, 1, D, H, W) float32.

        Reproducible from ``seed`` (episode keys drawn as the environment draws them);
        ``augment``: one random flip / axis permutation (``Augment``) for the batch."""
        g = np.random.default_rng(int(seed))
        keys = rng.as_keys([rng.draw_key(g) for _ in range(int(batch))], torch.device(device))
        pb = self.source().sample(keys, tuple(patch_shape))
        x, y = pb.image[:, None], pb.truth[:, None]
        if augment:
            a = Augment(int(seed) + 1, cubic=len(set(patch_shape)) == 1)
            x, y = a.apply(x).contiguous(), a.apply(y).contiguous()
        return x, y


def load_training_set(root, *, label_value: int | None = 1, modality: str = "auto", fg_prob: float = 0.66,
                      progress: bool = False) -> TrainingSet:
    """Read ``root/imagesTr`` + ``root/labelsTr`` (every file validated; one-line errors)."""
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"data path is not a folder: {root}")
    ds = DecathlonDataset(root, split="train", label_value=label_value, modality=modality)
    cases = [ds[i] for i in tqdm(range(len(ds)), desc="load", unit="case", disable=not progress, leave=False)]
    for c in cases:
        if min(c.shape) < 2:
            raise DataError(f"{c.image_path}: volume {c.shape} is too small (at least 2 voxels per axis)")
    if label_value is not None and not any(bool(c.label.any()) for c in cases):
        # same refusal as `train --data`: training on all-empty masks would "succeed" uselessly
        raise ValueError(f"no case in {root} has voxels with label value {label_value} "
                         "(--label-value): every label mask would be empty")
    return TrainingSet(cases, fg_prob=fg_prob, modality=ds.modality, ct_window=ds.ct_window)
