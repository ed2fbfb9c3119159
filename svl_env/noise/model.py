"""Noise specs and the ``NoiseModel`` they parse into (see the package doc for the forms).

A model's protocols are looked up in the registry (``svl_env.noise.registry``) by name, so a
protocol registered with ``register_noise`` is parsed, validated and applied like a built-in.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from .. import rng
from .registry import TAG_SELECT, get_noise, protocol_names, unknown_protocol

__all__ = ["TAG_NOISE", "NoiseModel", "parse_noise"]

TAG_NOISE = 40  # rng root tag of all annotation noise (sources: 20, intensity eps: 30)


def _parse_single(spec: Any) -> tuple[str, dict]:
    """'name' | 'name:k=v,k=v' | {'name': ..., k: v} -> (protocol, params)."""
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"noise spec dict {dict(spec)!r} needs a 'name' key "
                             f"(one of {', '.join(protocol_names())}), or must map protocol specs to mixture weights")
        name = spec["name"]
        if not isinstance(name, str) or name.strip().lower() not in protocol_names():
            raise unknown_protocol(name)
        proto = name.strip().lower()
        return proto, get_noise(proto).make_params({k: v for k, v in spec.items() if k != "name"})
    if not isinstance(spec, str):
        raise ValueError(f"bad noise spec {spec!r}: expected a protocol name ({', '.join(protocol_names())}), "
                         "'name:param=value,...', a mixture 'a+b', a dict, or a NoiseModel")
    name, _, rest = spec.partition(":")
    proto = name.strip().lower()
    if proto not in protocol_names():
        raise unknown_protocol(name.strip())
    given: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"noise {proto!r}: bad parameter item {item.strip()!r}; expected 'param=value' "
                                 f"(valid parameters: {get_noise(proto).valid_names()})")
            if key.strip() in given:
                raise ValueError(f"noise {proto!r}: parameter {key.strip()!r} given twice in {spec!r}")
            given[key.strip()] = value.strip()
    return proto, get_noise(proto).make_params(given)


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
                                 f"expected e.g. 'mt+markov' (protocols: {', '.join(protocol_names())})")
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
            comps.append((proto, get_noise(proto).make_params(params)))
        if not comps:
            raise ValueError("a NoiseModel needs at least one component")
        w = [1.0] * len(comps) if weights is None else [_check_weight(c[0], x) for c, x in zip(comps, weights)]
        if len(w) != len(comps) or sum(w) <= 0:
            raise ValueError("NoiseModel: one weight >= 0 per component, not all zero")
        total = sum(w)
        self.components = tuple(comps)
        self.weights = tuple(x / total for x in w)
        self.is_identity = all(get_noise(p).apply is None for p, _ in comps)
        self.name = "none" if self.is_identity else self._canonical()
        cum = torch.tensor(self.weights, dtype=torch.float64).cumsum(0)
        cum[-1] = 1.0
        self._cum = cum

    def _canonical(self) -> str:
        parts = []
        for proto, params in self.components:
            defaults = get_noise(proto).presets["default"]
            changed = [f"{k}={_fmt(v)}" for k, v in params.items() if v != defaults[k]]
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
        root = rng.substream(keys, TAG_NOISE)
        u = rng.params(root, TAG_SELECT, 2)
        selected = u[:, 0] < ratio
        cum = self._cum.to(u.device)
        choice = torch.searchsorted(cum, u[:, 1].double(), right=True).clamp_max(len(self.weights) - 1)
        for i, (proto, params) in enumerate(self.components):
            apply = get_noise(proto).apply
            if apply is None:  # the identity: rows unchanged, not corrupted
                continue
            rows = torch.nonzero(selected & (choice == i)).squeeze(1)
            if rows.numel() == 0:
                continue
            noisy[rows] = apply(truth[rows], root[rows], params)
            corrupted[rows] = True
        return noisy, corrupted

