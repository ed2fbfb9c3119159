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
(root tag ``TAG_NOISE = 40`` of ``rng``), so row b's result depends only on ``keys[b]`` and
``truth[b]``: a batch equals its rows computed one by one, and a row that draws protocol P in
a mixture gets the same annotation as under P alone. ``model.name`` is the canonical spec

Conventions shared by all protocols
-----------------------------------
- Sizes are in voxels, not scaled with the patch: an annotator's error is a physical size,
  and a 64^3 patch of a real volume shows the same anatomy at the same scale as a 32^3 one
  (only the procedural phantoms grow with the patch; see the 64^3 column below).
- Morphology (``svl_env.noise.morphology``) uses boolean shifts; the patch border is *not* an
  object border: voxels outside the patch are ignored, so a structure cut by the patch edge
  neither grows nor erodes from the edge. Affine warps and Gaussian smoothing replicate the border.
- Empty and full masks never crash and stay empty / full (nothing plausible to corrupt).

Protocols
---------
One module each, holding one ``NoiseProtocol`` (name, parameter schema with defaults and
ranges, presets, documented Dice range, ``apply``) and the protocol's documentation:
``svl_env.noise.mt`` (MT-Noise), ``.sp`` (superpixel-guided), ``.markov`` (boundary Markov),
``.flip`` (boundary speckle), ``.none`` (identity). ``PROTOCOLS``, ``DEFAULT_PARAMS``,
``LITERATURE_PARAMS``, ``PRESETS`` and ``DICE_AT_DEFAULTS`` are derived from the registered
protocols each time they are read, and so are the error messages and the table below.

Adding one is one call (``tests/env/test_noise_registry.py`` registers another toy one)::

    import gymnasium as gym
    from svl_env import rng
    from svl_env.noise import NoiseProtocol, Param, register_noise

    def apply(truth, keys, p):  # (b, D, H, W) bool, (b,) int64 noise keys, params
        u = rng.uniform(rng.substream(keys, 15), tuple(truth.shape[1:]))
        return truth ^ (u < p["p"])
    register_noise(NoiseProtocol("salt", apply, {"p": Param("float", 0.01, 0.0, 1.0, "flip probability")}, tag=15))
    env = gym.make("SVLDRL-v0", noise="0.5*salt:p=0.02+0.5*mt")

Defaults and the noise they produce
-----------------------------------
Dice(noisy, truth) at the defaults (``DEFAULT_PARAMS``), noise_ratio = 1, on the project's
phantoms (``svl_env.data.phantom.generate_phantoms``, 64 fixed keys, 32^3, all families;
asserted by ``tests/env/test_noise.py::test_dice_range_on_phantoms`` against ``DICE_AT_DEFAULTS``):
mean, 5th-95th percentile over the 64 patches, documented range of the mean, and the mean at
64^3 (24 keys; the phantoms grow with the patch, so the same voxel sizes corrupt less).
Measured with the phantoms as of the protocols' writing; the test's ranges leave room for
their tuning. The table (generated from the registered protocols, ``protocol_table()``):

{protocol_table}

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

from .model import TAG_NOISE, NoiseModel, parse_noise
from .protocol import NoiseProtocol, Param
from .registry import (default_params, dice_at_defaults, get_noise, literature_params, presets, protocol_names,
                       protocol_table, register_noise, unregister_noise)

__all__ = ["PROTOCOLS", "DEFAULT_PARAMS", "LITERATURE_PARAMS", "PRESETS", "DICE_AT_DEFAULTS", "NoiseModel",
           "parse_noise", "NoiseProtocol", "Param", "register_noise", "unregister_noise", "get_noise", "TAG_NOISE"]

# read-only views of the registry, derived when read so that they include registered protocols
_DERIVED = {"PROTOCOLS": protocol_names, "DEFAULT_PARAMS": default_params, "LITERATURE_PARAMS": literature_params,
            "PRESETS": presets, "DICE_AT_DEFAULTS": dice_at_defaults}


def __getattr__(name: str):
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_DERIVED))


__doc__ = __doc__.replace("{protocol_table}", protocol_table())
