"""The dataset fingerprint and the training settings derived from it, as nnU-Net does.

``fingerprint(ts)`` measures a ``TrainingSet``: volume shapes (voxels), spacing (mm), the
anisotropy of the spacing, the raw intensities (inside the given foreground and overall) and
the normalisation that was applied to them, and the foreground fraction.
``derive_settings(fp, ...)`` turns it into the patch, batch, window and normalisation of a run
(rule in its docstring); explicit user values always win. ``run_pipeline`` writes both to
``report.json`` (``fingerprint``, ``derived_settings``: every value with its ``source``,
``"fingerprint"`` or ``"user"``).

Raw intensities: ``TrainingSet.images`` are already mapped to [0, 1] by
``svl_env.data.nifti.normalise_intensity`` when the folder is read, so the fingerprint reads
each image file once more (``load_nifti`` + ``read_array``) for the raw values, and records
per case which normalisation was applied (``"auto"`` picks CT when the raw minimum is below
-500 HU, else MR -- the rule of ``normalise_intensity``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fingerprint", "derive_settings", "PATCH_CAP", "VOXEL_BUDGET", "ANISOTROPY_THRESHOLD",
           "STAT_SAMPLES"]

#: The largest patch side the rule picks: the measured CPU default (``DEFAULT_TRAIN["patch"]``,
#: which also keeps a CPU update fast; README "Staged pipeline").
PATCH_CAP = 32
#: Voxels per update (batch x patch voxels) the rule keeps: today's default, 4 x 32^3.
VOXEL_BUDGET = 4 * 32 ** 3
#: Spacing ratio (largest / smallest median spacing) from which the patch is per-axis (nnU-Net's 3).
ANISOTROPY_THRESHOLD = 3.0
#: At most this many voxels per case (overall, and inside the foreground) enter the intensity
#: statistics; drawn with a fixed seed, so a fingerprint is repeatable (nnU-Net samples too).
STAT_SAMPLES = 100_000
_PERCENTILES = (0.5, 50.0, 99.5)


def _stats(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"n": 0, "p0.5": None, "p50": None, "p99.5": None, "mean": None, "std": None}
    v = values.astype(np.float64, copy=False)
    p = np.percentile(v, _PERCENTILES)
    return {"n": int(v.size), "p0.5": float(p[0]), "p50": float(p[1]), "p99.5": float(p[2]),
            "mean": float(v.mean()), "std": float(v.std())}


def _sample(values: np.ndarray, g: np.random.Generator) -> np.ndarray:
    if values.size <= STAT_SAMPLES:
        return values
    return values[np.sort(g.choice(values.size, STAT_SAMPLES, replace=False))]


def _raw_image(case) -> np.ndarray:
    from svl_env.data.nifti import load_nifti, read_array

    return read_array(load_nifti(case.image_path, "image"), case.image_path, "image", as_float=True)


def fingerprint(ts, *, raw_images=None) -> dict:
    """The fingerprint of a ``TrainingSet`` (module doc). ``raw_images``: the raw intensity
    arrays, one per case (default: read from each case's ``image_path``).

    Keys: ``cases``; ``shape`` {median, min} (per axis, voxels); ``spacing`` {median} (per
    axis, mm); ``anisotropy`` (max / min of the median spacing); ``intensity`` {foreground,
    overall} with n, p0.5, p50, p99.5, mean, std of the raw values (at most ``STAT_SAMPLES``
    voxels per case, fixed seed); ``normalisation`` {modality_setting, applied (case count per
    normalisation), ct_window, to}; ``foreground_fraction`` {overall (voxel-weighted), mean
    (over cases)}.
    """
    shapes = np.array([c.shape for c in ts.cases], dtype=np.int64)
    spacings = np.array([c.spacing for c in ts.cases], dtype=np.float64)
    med_sp = np.median(spacings, axis=0)
    setting = getattr(ts, "modality", "auto")
    ct_window = tuple(float(v) for v in getattr(ts, "ct_window", (-175.0, 250.0)))
    g = np.random.default_rng(0)
    fg_vals, all_vals, applied = [], [], {}
    for i, (case, lab) in enumerate(zip(ts.cases, ts.given)):
        raw = np.asarray(raw_images[i] if raw_images is not None else _raw_image(case), dtype=np.float32)
        if raw.shape != lab.shape:
            raise ValueError(f"{case.name}: raw image shape {raw.shape} != label shape {lab.shape}")
        m = setting if setting != "auto" else ("ct" if raw.size and float(raw.min()) < -500.0 else "mr")
        applied[m] = applied.get(m, 0) + 1
        all_vals.append(_sample(raw.reshape(-1), g))
        fg_vals.append(_sample(raw[lab], g))
    fg = np.array([float(lab.mean()) for lab in ts.given])
    n_fg = sum(int(lab.sum()) for lab in ts.given)
    n_all = sum(int(lab.size) for lab in ts.given)
    norm = {"modality_setting": setting, "applied": dict(sorted(applied.items())), "to": "[0, 1]",
            "rule": {"ct": f"clip to the CT window {list(ct_window)} HU, scale",
                     "mr": "clip to the case's 0.5 / 99.5 percentiles, scale",
                     "none": "min-max"}}
    if "ct" in applied:
        norm["ct_window"] = list(ct_window)
    return {
        "cases": len(ts.cases),
        "shape": {"median": [float(v) for v in np.median(shapes, axis=0)], "min": [int(v) for v in shapes.min(0)]},
        "spacing": {"median": [float(v) for v in med_sp]},
        "anisotropy": float(med_sp.max() / med_sp.min()),
        "intensity": {"foreground": _stats(np.concatenate(fg_vals)), "overall": _stats(np.concatenate(all_vals))},
        "normalisation": norm,
        "foreground_fraction": {"overall": n_fg / max(n_all, 1), "mean": float(fg.mean())},
    }


def _multiple_below(limit: float, m: int) -> int:
    """The largest multiple of ``m`` <= ``limit``; at least ``m`` (and at least 4 voxels)."""
    p = max(int(limit // m) * m, m)
    while p < 4:  # make_train_config's minimum (the agents' 3x3x3 neighbourhoods)
        p += m
    return p


def derive_settings(fp: dict, *, multiple: int | None = None, cap: int = PATCH_CAP,
                    voxel_budget: int = VOXEL_BUDGET, anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
                    user: dict | None = None) -> dict:
    """Patch, batch, window and normalisation for a dataset with fingerprint ``fp``.

    Rule (nnU-Net's, scaled to a CPU budget):

    * ``patch``: the largest multiple of ``multiple`` (the network's size multiple, 2**depth of
      the U-Net: ``DEFAULT_MODEL``'s depth 3 -> 8) that is <= min(median shape, ``cap``), at
      least ``multiple``. ``cap`` (default ``PATCH_CAP`` = 32, the measured default) keeps CPU
      training fast. Isotropic data (``fp["anisotropy"]`` < ``anisotropy_threshold``, default
      3): one side for all three axes, from the smallest axis of the median shape. Anisotropic
      data: per axis, fewer voxels along the thick axes -- axis ``i`` gets
      ``min(median shape[i], cap x min spacing / spacing[i])`` rounded down to the multiple
      (the patch spans about the same millimetres in every direction, as nnU-Net's does).
      The model pads any input to its multiple, ``TrainingSet.sample`` / ``Augment`` (no axis
      permutation for non-cubic patches) and the environments' ``patch_size`` take per-axis
      patches, so such a patch is used as is (a list of three sides in the config).
    * ``batch``: ``max(1, voxel_budget // voxels(patch))`` of the patch in use (the user's or
      the derived one), so batch x patch voxels stays at today's default ``VOXEL_BUDGET``
      (4 x 32^3): 32^3 -> 4, 16^3 -> 32, 32x32x8 -> 16.
    * ``window`` (sliding-window inference): the patch in use.
    * ``normalisation``: the one applied when the folder was read (``fp["normalisation"]``;
      ``--modality`` or dataset.json or the raw-minimum rule) -- recorded, not changed.

    ``user``: explicit values (``patch``, ``batch``, ``window``, ``modality``; None = not given)
    win. Returns ``{name: {"value": ..., "source": "user" | "fingerprint"}}`` plus ``rule``
    (the parameters of the rule).
    """
    from agents.common.windows import as_triple
    from agents.staged.model import DEFAULT_MODEL

    user = {k: v for k, v in (user or {}).items() if v is not None}
    m = int(multiple) if multiple is not None else 2 ** int(DEFAULT_MODEL["depth"])
    if m < 1 or int(cap) < 1 or int(voxel_budget) < 1:
        raise ValueError("multiple, cap and voxel_budget must be >= 1")
    median = [float(v) for v in fp["shape"]["median"]]
    spacing = [float(v) for v in fp["spacing"]["median"]]
    anisotropic = float(fp["anisotropy"]) >= float(anisotropy_threshold)
    out: dict = {}
    if "patch" in user:
        patch = user["patch"]
        out["patch"] = {"value": patch, "source": "user"}
    else:
        if anisotropic:
            sides = [_multiple_below(min(s, cap * min(spacing) / sp), m) for s, sp in zip(median, spacing)]
            patch = sides[0] if len(set(sides)) == 1 else sides
        else:
            patch = _multiple_below(min(min(median), cap), m)
        out["patch"] = {"value": patch, "source": "fingerprint"}
    if "batch" in user:
        out["batch"] = {"value": int(user["batch"]), "source": "user"}
    else:
        voxels = int(np.prod(as_triple(patch, "patch")))
        out["batch"] = {"value": max(1, int(voxel_budget) // voxels), "source": "fingerprint"}
    if "window" in user and user["window"] != 0:
        out["window"] = {"value": user["window"], "source": "user"}
    else:
        out["window"] = {"value": patch, "source": out["patch"]["source"]}
    norm = fp.get("normalisation", {})
    applied = norm.get("applied", {})
    value = next(iter(applied)) if len(applied) == 1 else dict(applied)
    src = "user" if user.get("modality", "auto") != "auto" else "fingerprint"
    out["normalisation"] = {"value": value, "source": src}
    if "ct_window" in norm:
        out["normalisation"]["ct_window"] = norm["ct_window"]
    out["rule"] = {"multiple": m, "cap": int(cap), "voxel_budget": int(voxel_budget),
                   "anisotropy_threshold": float(anisotropy_threshold), "anisotropic": anisotropic}
    return out
