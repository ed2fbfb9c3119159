"""Annotation noise: simulated label errors from the noisy-label segmentation literature.

A *noise model* turns a batch of clean masks into noisy annotations. It is parsed from a
spec (``parse_noise``) and called on a batch::

    model = parse_noise("mt")                       # a protocol by name, default parameters
    model = parse_noise("mt:side_min=3,side_max=9") # with parameters
    model = parse_noise({"name": "markov", "T": 60})
    model = parse_noise("mt+markov")                # mixture, equal weights
    model = parse_noise({"mt": 0.7, "markov": 0.3}) # weighted mixture (= "0.7*mt+0.3*markov")
    model = parse_noise("mt:preset=literature")     # the published parameters (see below)
    noisy, corrupted = model(truth, keys, noise_ratio=0.5)

``truth`` is (B, D, H, W) bool (other dtypes: ``!= 0``), ``keys`` (B,) int64 episode keys
(``svl_env.rng``). Row b is *selected* iff a key-derived uniform is < ``noise_ratio`` (so the
selected set only grows with the ratio); a selected row draws one protocol of the mixture by
weight from its key and is corrupted by it. ``corrupted[b]`` is True iff the row was selected
and its protocol is not ``"none"`` -- for mixtures without ``"none"`` exactly the selected
rows. Unselected rows are returned unchanged. All randomness of row b comes from ``keys[b]``
(root tag ``_TAG_NOISE = 40`` of ``rng``), so row b's result depends only on ``keys[b]`` and
``truth[b]``: a batch equals its rows computed one by one, and a row that draws protocol P in
a mixture gets the same annotation as under P alone. ``model.name`` is the canonical spec
(``parse_noise(model.name) == model``), ``"none"`` iff the model is the identity.

Conventions shared by all protocols
-----------------------------------
- Sizes are in voxels, not scaled with the patch: an annotator's error is a physical size,
  and a 64^3 patch of a real volume shows the same anatomy at the same scale as a 32^3 one
  (only the procedural phantoms grow with the patch; see the 64^3 column below).
- Morphology uses boolean shifts, separable for the cube: one 3x3x3 step equals
  ``max_pool3d(x, 3, 1, 1)`` (dilation) / ``-max_pool3d(-x, 3, 1, 1)`` (erosion) exactly
  (tested), at 1/25 of max_pool3d's CPU time. Erosion is dilation of the complement.
- The patch border is *not* an object border: voxels outside the patch are ignored (as in
  max_pool3d's implicit padding), so a structure cut by the patch edge neither grows nor
  erodes from the edge. Affine warps and Gaussian smoothing replicate the border.
- Empty and full masks never crash and stay empty / full (nothing plausible to corrupt).

Protocols
---------
``"mt"`` -- MT-Noise (MTCL, Xu et al., IEEE TMI 2022; their generator: side =
    randint(3, 15), cube ``np.ones((s, s, s))``, scipy binary dilation or erosion with
    p = 0.5): dilation (p = ``p_dilate``) or erosion by a cube of side s ~ U{side_min ..
    side_max} voxels. Odd s = (s-1)/2 3x3x3 steps; even s adds one 2x2x2 step (max over
    {i, i+1} per axis: the half-voxel asymmetry of any even-sized cube). Rows are batched
    by iterating 3x3x3 steps and keeping each row's result at its own count.
    *Default sides 2..4 instead of 3..15*: MTCL corrupts whole LA volumes (crops of
    ~112x112x80 around an atrium 40-80 voxels across); the project's 32^3 patches hold
    structures 3-25 voxels across (vessels of radius 1.5-4, thin walls), ~3.5x smaller,
    where the published sides erase most of them (mean Dice 0.27 below, 1 mask in 4 wiped
    out). Shrinking 3..15 by that factor (~32/112) gives sides ~1..4; side 1 is the
    identity, hence 2..4 -- the published error relative to the structure size.
    ``preset=literature`` = 3..15 (for structures of LA's size, e.g. whole volumes).
``"sp"`` -- superpixel-guided protocol's noise (Li et al., MICCAI 2021): each corrupted row
    gets, with probability 1/3 each, iterative dilation, iterative erosion, or an affine
    warp (rotation about a random axis through the object's centroid by up to
    +-``max_angle`` degrees, plus a translation in a random direction of up to
    ``max_shift`` x the object's equivalent-sphere radius), sized to hit ``beta`` =
    |noisy xor truth| / |truth|. Dilation / erosion iterate 6-connected (cross) steps -- the
    finest grid step, so the overshoot past beta stays small -- and stop at the first step
    with ratio >= beta (or when nothing changes any more). The warp scales angle and
    translation together by s in {1/32, ..., 1} and takes the smallest s that reaches beta
    (per-row binary search; nearest grid_sample on an elementwise-built grid). Li et al.'s
    alpha (fraction of noisy cases: 0.3/0.5/0.7) is ``noise_ratio``; their beta: 0.5
    (default) and 0.7.
``"markov"`` -- boundary Markov noise (Yao et al., ICLR 2023, "Spatial Correction"; follows
    their generator code): T steps; each step grows the mask with probability ``theta1``
    toward the row's preferred direction (else the other way); every voxel on the active
    boundary (background voxels 6-adjacent to the mask when growing, mask voxels
    6-adjacent to background when shrinking) flips with probability ``theta2``. Then every
    voxel flips with probability ``theta3``, and the mask is Gaussian-smoothed (``sigma``,
    their 3D choice: 1 voxel) and thresholded at 0.5. ``direction``: ``grow`` = the
    authors' theta1 (probability of a growth step), ``shrink`` = their 1 - theta1,
    ``random`` (default) = grow or shrink per row with p = 0.5, their settings B1 and B2 in
    one model. Implementation: a voxel flips at its G-th step on the active boundary,
    G ~ Geometric(theta2) drawn once per voxel -- the law of a Bernoulli(theta2) trial per
    step for every first flip, without drawing T random fields (a voxel that flips back
    reuses its G). *Defaults*: the authors' 3D (BraTS) setting B1/B2 -- theta1 = 0.7,
    theta2 = 0.05, theta3 = 0 -- with T = 30 instead of 80. The front moves ~0.05-0.08
    voxel per step (Eden-like, faster as it roughens): with B1, T = 80 moves a surface by
    ~3.3 voxels, T = 30 by ~0.9 (measured, radius-16 sphere). 3 voxels wipe out the
    3-8-voxel-thick structures of a 32^3 patch (mean Dice 0.49 below), and the 2D JSRT
    setting (T = 180, theta1 = 0.8, theta2 = 0.05, theta3 = 0.2, ``preset=literature``)
    leaves Dice ~0.15; ~1 voxel on structures ~3x smaller than BraTS tumours keeps B1/B2's
    relative boundary error. ``preset=brats`` = B1 (T = 80, direction = grow).
``"flip"`` -- random flips of boundary voxels: every voxel within ``width`` 6-connected steps
    of the other label (a band 2*width voxels thick around the surface) flips with
    probability ``p``. No literature source: speckle that local filters (median, majority)
    can undo, a sanity baseline for refiners.
``"none"`` -- identity.

Defaults and the noise they produce
-----------------------------------
Dice(noisy, truth) at the defaults (``DEFAULT_PARAMS``), noise_ratio = 1, on the project's
phantoms (``phantom.generate_phantoms``, 64 fixed keys, 32^3, all families; asserted by
``tests/test_noise.py::test_dice_range_on_phantoms`` against ``DICE_AT_DEFAULTS``): mean,
5th-95th percentile over the 64 patches, documented range of the mean, and the mean at 64^3
(24 keys; the phantoms grow with the patch, so the same voxel sizes corrupt less). Measured
with phantom.py as of this module's writing; the test's ranges leave room for its tuning.

=========  ========================================================  =====  ===========  ===========  =====
protocol   parameters (defaults)                                     mean   p5 - p95     mean range   64^3
=========  ========================================================  =====  ===========  ===========  =====
none       --                                                        1.000  1.00 - 1.00  1.00 - 1.00  1.000
mt         side_min=2, side_max=4, p_dilate=0.5                      0.643  0.21 - 0.86  0.52 - 0.72  0.814
sp         beta=0.5, max_angle=30, max_shift=1.0, max_iter=64        0.669  0.27 - 0.79  0.58 - 0.75  0.705
markov     T=30, theta1=0.7, theta2=0.05, theta3=0,                  0.750  0.30 - 0.95  0.66 - 0.82  0.855
           direction=random, sigma=1.0
flip       width=1, p=0.3                                            0.862  0.79 - 0.93  0.82 - 0.90  0.928
=========  ========================================================  =====  ===========  ===========  =====

Literature presets on the same 64 phantoms (32^3): ``mt:preset=literature`` 0.27,
``markov:preset=literature`` 0.16, ``markov:preset=brats`` 0.49, ``sp:beta=0.7`` 0.53.
Low p5 values are thin vessels and walls that an erosion or a shrinking run removes.

Cost
----
Batched torch on ``truth.device``; loops only over iteration counts (dilation steps, Markov
steps, binary-search levels), never over voxels; over rows only inside ``rng`` (one C call
per row per random field). Milliseconds per call on a batch of 16 phantoms, noise_ratio = 1,
2-core CPU, torch 2.13, ``torch.set_num_threads(1)``, best of 9 (3 at 64^3), CPU time,
measured while other jobs kept the machine at load average 5-7 (an idle machine is faster):

========  =====  =====  ======  ======  =====
size      none   mt     sp      markov  flip
========  =====  =====  ======  ======  =====
16x32^3   0.0    1.4    29      37      4.1
16x64^3   0.4    8.6    280     330     34
========  =====  =====  ======  ======  =====

(mt re-measured at load average ~3.5 after its morphology began to run only on the rows that
need each step, as a lone row does: 3.1 and 27.9 ms before, in the same conditions.)

Markov = T steps of ~0.7 ms (at 32^3) + 6 ms of smoothing; sp = up to 6 warps of the affine
rows. With 2 threads on the loaded 2-core machine the same calls took 2-50x longer (OpenMP
threads waiting for a core): on a shared CPU, one thread per process is the faster setting.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from . import rng

__all__ = ["PROTOCOLS", "DEFAULT_PARAMS", "LITERATURE_PARAMS", "PRESETS", "DICE_AT_DEFAULTS", "NoiseModel",
           "parse_noise"]

PROTOCOLS = ("none", "mt", "sp", "markov", "flip")

_TAG_NOISE = 40  # rng root tag of everything in this module (sources: 20, intensity eps: 30)
_T_SELECT, _T_MT, _T_SP, _T_MARKOV, _T_FLIP = 1, 11, 12, 13, 14

# ----------------------------------------------------------------------------------------
# Parameters: defaults, presets, schema
# ----------------------------------------------------------------------------------------

DEFAULT_PARAMS: dict[str, dict] = {
    "none": {},
    # MTCL's morphological noise, sides scaled to 32^3 patches (module doc): published 3..15.
    "mt": {"side_min": 2, "side_max": 4, "p_dilate": 0.5},
    # Li et al. 2021: beta = |noisy xor truth| / |truth| (published 0.5 and 0.7); +-30 deg.
    "sp": {"beta": 0.5, "max_angle": 30.0, "max_shift": 1.0, "max_iter": 64},
    # Yao et al. 2023, their 3D (BraTS B1/B2) setting with T 80 -> 30 for 32^3; direction random per row.
    "markov": {"T": 30, "theta1": 0.7, "theta2": 0.05, "theta3": 0.0, "direction": "random", "sigma": 1.0},
    # boundary speckle (no literature source)
    "flip": {"width": 1, "p": 0.3},
}

LITERATURE_PARAMS: dict[str, dict] = {
    "none": {},
    "mt": {"side_min": 3, "side_max": 15, "p_dilate": 0.5},  # MTCL on LA
    "sp": {"beta": 0.5, "max_angle": 30.0, "max_shift": 1.0, "max_iter": 64},  # Li et al. (beta 0.5/0.7)
    "markov": {"T": 180, "theta1": 0.8, "theta2": 0.05, "theta3": 0.2, "direction": "grow", "sigma": 1.0},  # JSRT J1
    "flip": {"width": 1, "p": 0.3},
}

PRESETS: dict[str, dict[str, dict]] = {
    name: {"default": DEFAULT_PARAMS[name], "literature": LITERATURE_PARAMS[name]} for name in PROTOCOLS
}
PRESETS["markov"]["brats"] = {"T": 80, "theta1": 0.7, "theta2": 0.05, "theta3": 0.0, "direction": "grow", "sigma": 1.0}


# Documented range of the *mean* Dice(noisy, truth) at the defaults, noise_ratio = 1, on 64
# phantoms at 32^3 (module doc table; asserted by tests/test_noise.py). The margins cover the
# spread of the mean between key sets (sd 0.002-0.026) about 3x over.
DICE_AT_DEFAULTS: dict[str, tuple[float, float]] = {
    "none": (1.0, 1.0),
    "mt": (0.52, 0.72),
    "sp": (0.58, 0.75),
    "markov": (0.66, 0.82),
    "flip": (0.82, 0.90),
}


class _P:
    """One parameter: kind ('int' | 'float' | 'choice'), closed range or choices, doc."""

    def __init__(self, kind, lo=None, hi=None, doc="", choices=(), lo_open=False):
        self.kind, self.lo, self.hi, self.doc, self.choices, self.lo_open = kind, lo, hi, doc, tuple(choices), lo_open

    def valid(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lb = "(" if self.lo_open else "["
        return f"{self.kind} in {lb}{self.lo}, {self.hi}]"

    def convert(self, proto: str, name: str, value: Any):
        bad = ValueError(f"noise {proto!r}: bad value {value!r} for parameter {name!r}; expected {self.valid()}"
                         f" ({self.doc})")
        if isinstance(value, bool):
            raise bad
        if self.kind == "choice":
            v = str(value).strip().lower()
            if v not in self.choices:
                raise bad
            return v
        try:
            if isinstance(value, str):
                v = float(value.strip())
            else:
                v = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(v):
            raise bad
        if self.kind == "int":
            if v != int(v):
                raise bad
            v = int(v)
        if v < self.lo or v > self.hi or (self.lo_open and v == self.lo):
            raise bad
        return v


_SCHEMA: dict[str, dict[str, _P]] = {
    "none": {},
    "mt": {
        "side_min": _P("int", 1, 31, "smallest cube side, voxels"),
        "side_max": _P("int", 1, 31, "largest cube side, voxels"),
        "p_dilate": _P("float", 0.0, 1.0, "probability of dilation (else erosion)"),
    },
    "sp": {
        "beta": _P("float", 0.0, 3.0, "target |noisy xor truth| / |truth|", lo_open=True),
        "max_angle": _P("float", 0.0, 180.0, "largest rotation, degrees"),
        "max_shift": _P("float", 0.0, 4.0, "largest translation, in equivalent radii of the object"),
        "max_iter": _P("int", 1, 1024, "cap on dilation/erosion steps"),
    },
    "markov": {
        "T": _P("int", 0, 10000, "number of Markov steps"),
        "theta1": _P("float", 0.0, 1.0, "probability that a step goes the preferred direction"),
        "theta2": _P("float", 0.0, 1.0, "flip probability of an active-boundary voxel per step"),
        "theta3": _P("float", 0.0, 1.0, "final random flip probability of every voxel"),
        "direction": _P("choice", doc="preferred direction", choices=("random", "grow", "shrink")),
        "sigma": _P("float", 0.0, 8.0, "Gaussian smoothing sigma in voxels before thresholding (0: none)"),
    },
    "flip": {
        "width": _P("int", 1, 64, "half-width of the boundary band, voxels (6-connected steps)"),
        "p": _P("float", 0.0, 1.0, "flip probability of a band voxel"),
    },
}


def _unknown_protocol(name: Any) -> ValueError:
    return ValueError(f"unknown noise protocol {name!r}; valid: {', '.join(PROTOCOLS)} "
                      f"(or a mixture such as 'mt+markov' / {{'mt': 0.7, 'markov': 0.3}})")


def _make_params(proto: str, given: Mapping[str, Any]) -> dict:
    """Defaults (or a preset) overridden by ``given``; every value checked."""
    schema = _SCHEMA[proto]
    given = dict(given)
    preset = given.pop("preset", "default")
    presets = PRESETS[proto]
    if not isinstance(preset, str) or preset.strip().lower() not in presets:
        raise ValueError(f"noise {proto!r}: unknown preset {preset!r}; valid: {', '.join(presets)}")
    params = dict(presets[preset.strip().lower()])
    by_lower = {k.lower(): k for k in schema}  # parameter names are case-insensitive ("t" = "T")
    for key, value in given.items():
        name = by_lower.get(key.lower()) if isinstance(key, str) else None
        if name is None:
            valid = ", ".join(list(schema) + ["preset"])
            raise ValueError(f"noise {proto!r}: unknown parameter {key!r}; valid parameters: {valid}")
        params[name] = schema[name].convert(proto, name, value)
    if proto == "mt" and params["side_min"] > params["side_max"]:
        raise ValueError(f"noise 'mt': side_min={params['side_min']} > side_max={params['side_max']}")
    return params


def _parse_single(spec: Any) -> tuple[str, dict]:
    """'name' | 'name:k=v,k=v' | {'name': ..., k: v} -> (protocol, params)."""
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"noise spec dict {dict(spec)!r} needs a 'name' key (one of {', '.join(PROTOCOLS)}), "
                             "or must map protocol specs to mixture weights")
        name = spec["name"]
        if not isinstance(name, str) or name.strip().lower() not in PROTOCOLS:
            raise _unknown_protocol(name)
        proto = name.strip().lower()
        return proto, _make_params(proto, {k: v for k, v in spec.items() if k != "name"})
    if not isinstance(spec, str):
        raise ValueError(f"bad noise spec {spec!r}: expected a protocol name ({', '.join(PROTOCOLS)}), "
                         "'name:param=value,...', a mixture 'a+b', a dict, or a NoiseModel")
    name, _, rest = spec.partition(":")
    proto = name.strip().lower()
    if proto not in PROTOCOLS:
        raise _unknown_protocol(name.strip())
    given: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"noise {proto!r}: bad parameter item {item.strip()!r}; expected 'param=value' "
                                 f"(valid parameters: {', '.join(list(_SCHEMA[proto]) + ['preset'])})")
            if key.strip() in given:
                raise ValueError(f"noise {proto!r}: parameter {key.strip()!r} given twice in {spec!r}")
            given[key.strip()] = value.strip()
    return proto, _make_params(proto, given)


def _check_weight(spec: Any, w: Any) -> float:
    try:
        v = float(w)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(w, bool) or not math.isfinite(v) or v < 0:
        raise ValueError(f"bad mixture weight {w!r} for noise {spec!r}: expected a finite number >= 0")
    return v


_WEIGHTED = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE]-?[0-9]+)?)\s*\*\s*(.+)$")


def parse_noise(spec) -> "NoiseModel":
    """A ``NoiseModel`` from a spec (see the module doc); ValueError on a bad spec.

    Accepted: a protocol name (``"mt"``); a name with parameters (``"mt:side_min=3,side_max=9"``,
    ``{"name": "mt", "side_max": 9}``, ``"markov:preset=literature"``); a mixture (``"mt+markov"``
    equal weights, ``"0.7*mt+0.3*markov"``, ``{"mt": 0.7, "markov:T=60": 0.3}``, a list of specs);
    an existing ``NoiseModel`` (returned as is).
    """
    if isinstance(spec, NoiseModel):
        return spec
    comps: list[tuple[str, dict]] = []
    weights: list[float] = []
    if isinstance(spec, Mapping) and "name" not in spec:
        if not spec:
            raise ValueError("empty noise mixture {}; give at least one protocol with a weight")
        for sub, w in spec.items():
            weights.append(_check_weight(sub, w))
            comps.append(_parse_single(sub))
    elif isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("empty noise mixture []; give at least one protocol")
        for sub in spec:
            comps.append(_parse_single(sub))
            weights.append(1.0)
    elif isinstance(spec, str) and "+" in spec:
        for part in spec.split("+"):
            if not part.strip():
                raise ValueError(f"bad noise mixture {spec!r}: empty component; "
                                 f"expected e.g. 'mt+markov' (protocols: {', '.join(PROTOCOLS)})")
            m = _WEIGHTED.match(part)
            weights.append(_check_weight(part, m.group(1)) if m else 1.0)
            comps.append(_parse_single(m.group(2) if m else part))
    else:
        comps.append(_parse_single(spec))
        weights.append(1.0)
    if sum(weights) <= 0:
        raise ValueError(f"noise mixture {spec!r}: all weights are zero")
    keep = [i for i, w in enumerate(weights) if w > 0]
    return NoiseModel([comps[i] for i in keep], [weights[i] for i in keep])


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class NoiseModel:
    """Parsed, validated noise spec. Call on a batch.

    Attributes: ``components`` (tuple of (protocol, params dict)), ``weights`` (tuple, sums
    to 1), ``name`` (canonical spec string; ``parse_noise(model.name)`` rebuilds the model;
    ``"none"`` iff the model is the identity), ``is_identity``.
    """

    def __init__(self, components, weights=None):
        comps = []
        for proto, params in components:
            if proto not in PROTOCOLS:
                raise _unknown_protocol(proto)
            comps.append((proto, _make_params(proto, params)))
        if not comps:
            raise ValueError("a NoiseModel needs at least one component")
        w = [1.0] * len(comps) if weights is None else [_check_weight(c[0], x) for c, x in zip(comps, weights)]
        if len(w) != len(comps) or sum(w) <= 0:
            raise ValueError("NoiseModel: one weight >= 0 per component, not all zero")
        total = sum(w)
        self.components = tuple(comps)
        self.weights = tuple(x / total for x in w)
        self.is_identity = all(p == "none" for p, _ in comps)
        self.name = "none" if self.is_identity else self._canonical()
        cum = torch.tensor(self.weights, dtype=torch.float64).cumsum(0)
        cum[-1] = 1.0
        self._cum = cum

    def _canonical(self) -> str:
        parts = []
        for proto, params in self.components:
            changed = [f"{k}={_fmt(v)}" for k, v in params.items() if v != DEFAULT_PARAMS[proto][k]]
            parts.append(proto + (":" + ",".join(changed) if changed else ""))
        if len(parts) == 1:
            return parts[0]
        if len(set(self.weights)) == 1:
            return "+".join(parts)
        return "+".join(f"{w:.10g}*{p}" for w, p in zip(self.weights, parts))

    def __repr__(self) -> str:
        return f"NoiseModel({self.name!r})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, NoiseModel) and self.components == other.components
                and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(self.weights, other.weights)))

    def __hash__(self) -> int:
        return hash(tuple(p for p, _ in self.components))

    def __call__(self, truth: torch.Tensor, keys: torch.Tensor, noise_ratio: float = 1.0):
        """truth (B,D,H,W) bool, keys (B,) int64 -> (noisy (B,D,H,W) bool, corrupted (B,) bool).

        Row b is corrupted iff a key-derived uniform < noise_ratio (and its mixture draw is
        not ``"none"``); uncorrupted rows are returned unchanged.
        """
        try:
            ratio = float(noise_ratio)
        except (TypeError, ValueError):
            ratio = float("nan")
        if isinstance(noise_ratio, bool) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"noise_ratio must be a number in [0, 1], got {noise_ratio!r}")
        truth = torch.as_tensor(truth)
        if truth.ndim != 4:
            raise ValueError(f"truth must be (B, D, H, W), got shape {tuple(truth.shape)}")
        if truth.dtype != torch.bool:
            truth = truth != 0
        keys = rng.as_keys(keys, truth.device)
        if keys.shape[0] != truth.shape[0]:
            raise ValueError(f"need one key per row: {keys.shape[0]} keys for {truth.shape[0]} rows")
        b = truth.shape[0]
        noisy = truth.clone()
        corrupted = torch.zeros(b, dtype=torch.bool, device=truth.device)
        if b == 0 or self.is_identity or ratio == 0.0:
            return noisy, corrupted
        root = rng.substream(keys, _TAG_NOISE)
        u = rng.params(root, _T_SELECT, 2)
        selected = u[:, 0] < ratio
        cum = self._cum.to(u.device)
        choice = torch.searchsorted(cum, u[:, 1].double(), right=True).clamp_max(len(self.weights) - 1)
        for i, (proto, params) in enumerate(self.components):
            if proto == "none":
                continue
            rows = torch.nonzero(selected & (choice == i)).squeeze(1)
            if rows.numel() == 0:
                continue
            noisy[rows] = _APPLY[proto](truth[rows], root[rows], params)
            corrupted[rows] = True
        return noisy, corrupted


# ----------------------------------------------------------------------------------------
# Morphology on bool tensors (B, D, H, W); outside the patch is ignored
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _w_keep(shape: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (D*H*W,) masks of the voxels with w > 0 and with w < W - 1."""
    w = torch.arange(shape[0] * shape[1] * shape[2], device=device) % shape[2]
    return w != 0, w != shape[2] - 1


def _or_shift(out: torch.Tensor, src: torch.Tensor, dim: int, forward: bool = True, backward: bool = True):
    """out |= src shifted by +1 (forward: out[i] |= src[i-1]) and/or -1 along dim, no wrap-around.

    Along the last axis the shift is done on the flattened rows with a mask of the first / last
    column (one long contiguous loop instead of B*D*H loops of W - 1: 5x faster on CPU).
    """
    n = src.shape[dim]
    if n <= 1:
        return out
    if dim != 3:
        if forward:
            out.narrow(dim, 1, n - 1).logical_or_(src.narrow(dim, 0, n - 1))
        if backward:
            out.narrow(dim, 0, n - 1).logical_or_(src.narrow(dim, 1, n - 1))
        return out
    b = src.shape[0]
    flat_out, flat_src = out.view(b, -1), src.contiguous().view(b, -1)
    not_first, not_last = _w_keep(tuple(src.shape[1:]), src.device)
    if forward:
        flat_out[:, 1:].logical_or_(flat_src[:, :-1] & not_first[1:])
    if backward:
        flat_out[:, :-1].logical_or_(flat_src[:, 1:] & not_last[:-1])
    return out


def _xor_rows(m: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """m ^ flags[b] per row. On 8-byte-aligned rows it xors packed int64 words (10x faster
    than a broadcast bool xor on CPU); bools are bytes 0/1, so 0x0101.. flips every voxel."""
    b = m.shape[0]
    n = m[0].numel() if b else 0
    if n % 8 or not m.is_contiguous() or m.storage_offset() % 8:
        return m ^ _rows(flags)
    word = torch.where(flags, 0x0101010101010101, 0).view(b, 1)
    return (m.view(b, -1).view(torch.int64) ^ word).view(torch.bool).view(m.shape)


def _dilate_cube(y: torch.Tensor) -> torch.Tensor:
    """One 3x3x3 dilation (== max_pool3d(y, 3, 1, 1)), separable."""
    for dim in (1, 2, 3):
        y = _or_shift(y.clone(), y, dim)
    return y


def _dilate_half(y: torch.Tensor) -> torch.Tensor:
    """One 2x2x2 dilation: out[i] = max(y[i], y[i+1]) per axis."""
    for dim in (1, 2, 3):
        y = _or_shift(y.clone(), y, dim, forward=False)
    return y


def _dilate_cross(y: torch.Tensor) -> torch.Tensor:
    """One 6-connected dilation (3x3x3 cross)."""
    out = y.clone()
    for dim in (1, 2, 3):
        _or_shift(out, y, dim)
    return out


def _rows(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting over volumes."""
    return v.view(-1, 1, 1, 1)


def _gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, D, H, W) float, radius ceil(3 sigma), border replicated
    (scipy's mode='nearest'). Weighted sums of shifted slices: on CPU 20x faster than conv3d."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
    total = sum(taps)
    y = F.pad(x.unsqueeze(1), (r, r, r, r, r, r), mode="replicate").squeeze(1)
    for dim, n in zip((1, 2, 3), x.shape[1:]):
        out = y.narrow(dim, 0, n) * (taps[0] / total)
        for i in range(1, 2 * r + 1):
            out.add_(y.narrow(dim, i, n), alpha=taps[i] / total)
        y = out
    return y


# ----------------------------------------------------------------------------------------
# Protocols: (truth (b,D,H,W) bool, keys (b,), params) -> noisy (b,D,H,W) bool
# ----------------------------------------------------------------------------------------


def _mt(truth: torch.Tensor, keys: torch.Tensor, p: dict) -> torch.Tensor:
    u = rng.params(keys, _T_MT, 2)
    lo, hi = p["side_min"], p["side_max"]
    side = (lo + torch.floor(u[:, 0] * (hi - lo + 1))).long().clamp(lo, hi)
    erode = u[:, 1] >= p["p_dilate"]
    y = _xor_rows(truth, erode)  # erosion = dilation of the complement
    # Each morphology step runs only on the rows that still need it (the rest keep their
    # result), as a row alone would: a batch does no more work than its rows one by one.
    even = (side % 2 == 0).nonzero()[:, 0]
    if len(even):
        y = y.clone()
        y[even] = _dilate_half(y[even])
    steps = (side - 1) // 2
    out = y.clone()
    rows = (steps >= 1).nonzero()[:, 0]
    cur, k = y[rows], 1
    while len(rows):
        cur = _dilate_cube(cur)
        done = steps[rows] == k
        out[rows[done]] = cur[done]
        rows, cur, k = rows[~done], cur[~done], k + 1
    return _xor_rows(out, erode)


def _iterate_to_beta(truth: torch.Tensor, erode: torch.Tensor, beta: float, max_iter: int) -> torch.Tensor:
    """Cross-step dilation (erosion where ``erode``) until |xor| / |truth| >= beta, per row."""
    y = truth ^ _rows(erode)
    size = truth.flatten(1).sum(1)
    done = size == 0
    cur = y
    for _ in range(max_iter):
        if bool(done.all()):
            break
        nxt = _dilate_cross(cur)
        changed = (nxt != cur).flatten(1).any(1)
        cur = torch.where(_rows(done), cur, nxt)
        ratio = (cur ^ y).flatten(1).sum(1).double() / size.clamp_min(1).double()
        done = done | (ratio >= beta) | ~changed
    return cur ^ _rows(erode)


def _unit_vectors(u_z: torch.Tensor, u_phi: torch.Tensor) -> torch.Tensor:
    """Uniform directions on the sphere from two U[0,1) columns -> (b, 3)."""
    z = 2.0 * u_z - 1.0
    phi = 2.0 * math.pi * u_phi
    s = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    return torch.stack([s * torch.cos(phi), s * torch.sin(phi), z], dim=1)


def _rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues, elementwise: (b,3) unit axes, (b,) radians -> (b,3,3) = c I + s [a]x + (1-c) a a^T."""
    x, y, z = axis.unbind(1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    s, c = torch.sin(angle).view(-1, 1, 1), torch.cos(angle).view(-1, 1, 1)
    return c * eye + s * cross + (1.0 - c) * axis.unsqueeze(2) * axis.unsqueeze(1)


def _affine_to_beta(truth: torch.Tensor, u: torch.Tensor, p: dict, levels: int = 32) -> torch.Tensor:
    """Rotation about the centroid + translation, scaled by the smallest s in {1/levels..1} hitting beta.

    Everything per row is elementwise or an exact integer sum (no batched matmul whose float
    rounding could depend on the batch), so a row's warp does not depend on its batch.
    """
    b, d, h, w = truth.shape
    dev = truth.device
    size_i = truth.flatten(1).sum(1)
    size = size_i.float()
    dims = torch.tensor([d, h, w], dtype=torch.float32, device=dev)
    marginals = (truth.sum((2, 3)), truth.sum((1, 3)), truth.sum((1, 2)))  # exact int64 (b, n)
    moments = torch.stack([(mg * torch.arange(mg.shape[1], device=dev)).sum(1) for mg in marginals], 1)
    centre = moments.double() / size_i.clamp_min(1).double().unsqueeze(1)
    centre = torch.where(size_i.unsqueeze(1) > 0, centre.float(), (dims - 1) / 2)
    r_eq = (3.0 * size / (4.0 * math.pi)).pow(1.0 / 3.0)
    angle = (2.0 * u[:, 1] - 1.0) * math.radians(p["max_angle"])
    axis = _unit_vectors(u[:, 2], u[:, 3])
    shift = _unit_vectors(u[:, 4], u[:, 5]) * (p["max_shift"] * r_eq).unsqueeze(1)
    half = ((dims - 1) / 2).clamp_min(0.5)
    src = truth.float().unsqueeze(1)
    # normalised output coordinates n = q / half - 1 per axis (align_corners=True), shaped to broadcast
    base = [torch.arange(n, dtype=torch.float32, device=dev) / half[i] - 1.0 for i, n in enumerate((d, h, w))]
    base = [base[0].view(1, d, 1, 1), base[1].view(1, 1, h, 1), base[2].view(1, 1, 1, w)]

    def warp(s: torch.Tensor) -> torch.Tensor:
        # output voxel q samples pos = R^T (q - c - s t) + c. With q = half (n + 1):
        # n_in = A n_out + a, A = H^-1 R^T H, a = H^-1 (R^T (half - c - s t) + c) - 1.
        rt = _rotation(axis, s * angle).transpose(1, 2)
        mat = rt * half.view(1, 1, 3) / half.view(1, 3, 1)
        off = ((rt * (half - centre - s.unsqueeze(1) * shift).unsqueeze(1)).sum(2) + centre) / half - 1.0
        comp = [mat[:, i, 0].view(b, 1, 1, 1) * base[0] + mat[:, i, 1].view(b, 1, 1, 1) * base[1]
                + mat[:, i, 2].view(b, 1, 1, 1) * base[2] + off[:, i].view(b, 1, 1, 1) for i in range(3)]
        grid = torch.stack(comp[::-1], dim=-1)  # grid_sample wants (x, y, z) = (w, h, d)
        out = F.grid_sample(src, grid, mode="nearest", padding_mode="border", align_corners=True)
        return out.squeeze(1) > 0.5

    def reaches(m: torch.Tensor) -> torch.Tensor:
        return (m ^ truth).flatten(1).sum(1).float() >= p["beta"] * size

    lo = torch.zeros(b, dtype=torch.long, device=dev)  # s = 0 is the identity: never reaches beta > 0
    hi = torch.full((b,), levels, dtype=torch.long, device=dev)
    best = warp(torch.ones(b, device=dev))  # result at hi
    while bool((hi - lo > 1).any()):
        active = hi - lo > 1
        mid = (lo + hi) // 2
        cand = warp(mid.float() / levels)
        ok = reaches(cand)
        up, down = active & ok, active & ~ok
        best = torch.where(_rows(up), cand, best)
        hi = torch.where(up, mid, hi)
        lo = torch.where(down, mid, lo)
    return best


def _sp(truth: torch.Tensor, keys: torch.Tensor, p: dict) -> torch.Tensor:
    u = rng.params(keys, _T_SP, 6)
    op = torch.floor(u[:, 0] * 3).long().clamp_max(2)  # 0 dilation, 1 erosion, 2 affine
    out = truth.clone()
    morph = torch.nonzero(op < 2).squeeze(1)
    if morph.numel():
        out[morph] = _iterate_to_beta(truth[morph], op[morph] == 1, p["beta"], p["max_iter"])
    aff = torch.nonzero(op == 2).squeeze(1)
    if aff.numel():
        out[aff] = _affine_to_beta(truth[aff], u[aff], p)
    return out


def _geometric(u: torch.Tensor, theta: float, cap: int) -> torch.Tensor:
    """Geometric(theta) on {1, 2, ...} from U[0,1), capped at ``cap``, as int16."""
    if theta <= 0.0:
        return torch.full_like(u, cap, dtype=torch.int16)
    if theta >= 1.0:
        return torch.ones_like(u, dtype=torch.int16)
    g = torch.floor(torch.log1p(-u) / math.log1p(-theta)) + 1.0
    return g.clamp(1, cap).to(torch.int16)


def _markov(truth: torch.Tensor, keys: torch.Tensor, p: dict) -> torch.Tensor:
    b, d, h, w = truth.shape
    steps = p["T"]
    u = rng.params(keys, _T_MARKOV, steps + 1)
    if p["direction"] == "random":
        prefer_grow = u[:, 0] < 0.5
    else:
        prefer_grow = torch.full((b,), p["direction"] == "grow", dtype=torch.bool, device=truth.device)
    with_pref = u[:, 1:] < p["theta1"]
    shrink_steps = with_pref ^ prefer_grow.unsqueeze(1)  # (b, T): True = shrink step
    m = truth.clone()
    if steps > 0 and p["theta2"] > 0:
        # remaining active-boundary steps before each voxel flips; reset to G after a flip
        # exact: a voxel needs G <= T active steps to flip at all, so G is capped at T + 1
        dtype = torch.uint8 if steps < 255 else torch.int16
        wait = _geometric(rng.uniform(rng.substream(keys, _T_MARKOV, 1), (d, h, w)), p["theta2"], steps + 1)
        wait = wait.to(dtype)
        left = wait.clone()
        for t in range(steps):
            y = _xor_rows(m, shrink_steps[:, t])  # grows: m itself, or the background on shrink steps
            active = _dilate_cross(y)
            active &= ~y  # voxels of the other label 6-adjacent to y: the active boundary
            left -= active.view(torch.uint8)
            flip = left.logical_not()
            m ^= flip
            left += wait * flip.view(torch.uint8)
    if p["theta3"] > 0:
        m ^= rng.uniform(rng.substream(keys, _T_MARKOV, 2), (d, h, w)) < p["theta3"]
    if p["sigma"] > 0:
        m = _gaussian_smooth(m.float(), p["sigma"]) > 0.5
    return m


def _flip(truth: torch.Tensor, keys: torch.Tensor, p: dict) -> torch.Tensor:
    inner, outer = truth, ~truth
    for _ in range(p["width"]):
        inner, outer = _dilate_cross(inner), _dilate_cross(outer)
    band = inner & outer  # within `width` 6-steps of the other label, on either side
    u = rng.uniform(rng.substream(keys, _T_FLIP), tuple(truth.shape[1:]))
    return truth ^ (band & (u < p["p"]))


_APPLY = {"mt": _mt, "sp": _sp, "markov": _markov, "flip": _flip}
