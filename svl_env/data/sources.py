"""Volume sources: where an episode's image, truth and/or annotation patch comes from.

A source turns a batch of episode keys (one per environment, see ``rng``) into a batch of
patches. Three kinds:

- ``PhantomSource``: the embedded procedural phantoms (exact truth, 1 mm spacing).
- ``CaseSource``: a list of in-memory cases -- built from a Decathlon NIfTI folder
  (``CaseSource.from_folder``) or from arrays (``CaseSource.from_arrays``); patches are cut
  with foreground-biased sampling. Labels are either the truth (``labels="clean"``: noise is
  then simulated) or the given noisy annotation (``labels="noisy"``: no truth is known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import rng
from .decathlon import DecathlonDataset
from .nifti import Case
from .patches import crop, patch_origin

#: rng tag of a ``CaseSource`` row's draws: ``rng.params(keys, TAG_CASE, 5)`` = case choice, then
#: the 4 uniforms of ``patches.patch_origin`` (code that re-cuts the same patches uses it too)
TAG_CASE = 20


@dataclass
class PatchBatch:
    """A batch of patches, tensors on one device.

    image (B, D, H, W) float32 in [0, 1]; truth / annotation (B, D, H, W) float32 {0, 1} or
    None when the source does not know them; spacing (B, 3) float64 in mm; names: case ids.
    """

    image: torch.Tensor
    truth: torch.Tensor | None
    annotation: torch.Tensor | None
    spacing: torch.Tensor
    names: list[str]


class PhantomSource:
    """Procedural phantoms: a fresh volume per episode, a pure function of the episode key."""

    has_truth = True
    has_annotation = False
    min_patch_size = 8  # phantom.generate_phantoms needs >= 8 voxels per axis

    def __init__(self, families: Sequence[str] | None = None, modalities: Sequence[str] | None = None):
        from . import phantom

        self.families = tuple(families) if families else phantom.DEFAULT_FAMILIES
        self.modalities = tuple(modalities) if modalities else phantom.MODALITIES
        for f in self.families:
            if f not in phantom.FAMILIES:
                raise ValueError(f"unknown phantom family {f!r}; valid: {list(phantom.FAMILIES)}")
        for m in self.modalities:
            if m not in phantom.MODALITIES:
                raise ValueError(f"unknown phantom modality {m!r}; valid: {list(phantom.MODALITIES)}")
        self._generate = phantom.generate_phantoms

    def __repr__(self) -> str:
        return f"PhantomSource(families={self.families}, modalities={self.modalities})"

    def sample(self, keys: torch.Tensor, patch_shape: tuple[int, int, int]) -> PatchBatch:
        image, truth = self._generate(keys, patch_shape, families=self.families, modalities=self.modalities)
        spacing = torch.ones(keys.shape[0], 3, dtype=torch.float64, device=keys.device)
        names = [f"phantom_{k}" for k in keys.tolist()]
        return PatchBatch(image, truth.float(), None, spacing, names)


class CaseSource:
    """Patches cut from a list of ``nifti.Case`` (whole volumes kept in host memory)."""

    def __init__(self, cases: Sequence[Case], labels: str = "clean", fg_prob: float = 0.66):
        if labels not in ("clean", "noisy"):
            raise ValueError(f"labels must be 'clean' or 'noisy', got {labels!r}")
        if len(cases) == 0:
            raise ValueError("no cases given")
        if not 0.0 <= fg_prob <= 1.0:
            raise ValueError(f"fg_prob must be in [0, 1], got {fg_prob}")
        self.cases = cases
        self.labels = labels
        self.fg_prob = fg_prob
        self.has_truth = labels == "clean"
        self.has_annotation = labels == "noisy"

    def __repr__(self) -> str:
        return f"CaseSource({len(self.cases)} cases, labels={self.labels!r})"

    @classmethod
    def from_folder(cls, root, *, labels: str = "clean", label_value: int | None = 1, modality: str = "auto",
                    fg_prob: float = 0.66, **kwargs) -> "CaseSource":
        """A Decathlon folder (``imagesTr/``, ``labelsTr/``); see ``decathlon.DecathlonDataset``."""
        return cls(DecathlonDataset(root, label_value=label_value, modality=modality, **kwargs), labels, fg_prob)

    @classmethod
    def from_arrays(cls, images, labels, *, spacing=(1.0, 1.0, 1.0), labels_are: str = "clean",
                    fg_prob: float = 0.66, names: Sequence[str] | None = None) -> "CaseSource":
        """In-memory volumes: ``images`` and ``labels`` are sequences of (D, H, W) arrays
        (images already scaled to [0, 1]; labels binary)."""
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        cases = []
        for i, (im, lb) in enumerate(zip(images, labels)):
            name = names[i] if names else f"case_{i:03d}"
            im = np.asarray(im, dtype=np.float32)
            lb = np.asarray(lb)
            if im.ndim != 3:
                raise ValueError(f"{name}: image must be 3D (D, H, W), got shape {im.shape}")
            if lb.shape != im.shape:
                raise ValueError(f"{name}: label shape {lb.shape} != image shape {im.shape}")
            if not np.isfinite(im).all():
                raise ValueError(f"{name}: image contains NaN or Inf")
            if im.min() < 0 or im.max() > 1:
                raise ValueError(f"{name}: image intensities must lie in [0, 1] (got {im.min():.3g}..{im.max():.3g})")
            cases.append(Case(name=name, image=im, label=lb.astype(bool), spacing=tuple(map(float, spacing)),
                              affine=np.diag([*map(float, spacing), 1.0]), image_path=None, label_path=None))
        return cls(cases, labels_are, fg_prob)

    def sample(self, keys: torch.Tensor, patch_shape: tuple[int, int, int]) -> PatchBatch:
        u = rng.params(keys, TAG_CASE, 5).cpu().numpy().astype(np.float64)
        images, labels, spacings, names = [], [], [], []
        for row in u:  # host-side data loading: one crop per environment being reset
            case = self.cases[min(int(row[0] * len(self.cases)), len(self.cases) - 1)]
            origin = patch_origin(case.image.shape, patch_shape, case.label, row[1:], self.fg_prob)
            images.append(crop(case.image, origin, patch_shape))
            labels.append(crop(case.label, origin, patch_shape))
            spacings.append(case.spacing)
            names.append(case.name)
        dev = keys.device
        image = torch.as_tensor(np.stack(images), dtype=torch.float32, device=dev)
        label = torch.as_tensor(np.stack(labels).astype(np.float32), device=dev)
        spacing = torch.as_tensor(np.asarray(spacings, dtype=np.float64), device=dev)
        truth, annotation = (label, None) if self.has_truth else (None, label)
        return PatchBatch(image, truth, annotation, spacing, names)


def make_source(data, **kwargs):
    """``"phantom"`` | a Decathlon folder path | a source object -> a source."""
    if isinstance(data, (PhantomSource, CaseSource)) or hasattr(data, "sample"):
        if kwargs:
            raise ValueError(f"data options {sorted(kwargs)} only apply when data is 'phantom' or a folder")
        return data
    if isinstance(data, str) and data == "phantom":
        allowed = {"families", "modalities"}
        bad = set(kwargs) - allowed
        if bad:
            raise ValueError(f"option(s) {sorted(bad)} do not apply to phantom data; valid: {sorted(allowed)}")
        return PhantomSource(**kwargs)
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"data folder not found: {path} (use data='phantom' for the built-in phantoms)")
        return CaseSource.from_folder(path, **kwargs)
    raise ValueError(f"data must be 'phantom', a folder path or a source object, got {type(data).__name__}")
