"""``NoiseProtocol``: everything about one noise protocol in one object.

A protocol module defines one ``NoiseProtocol`` (name, parameter schema with defaults and
ranges, named presets, the documented Dice range, ``apply``); ``svl_env.noise.registry``
holds the registered ones, and parsing, validation, error messages and the tables of the
package doc are derived from them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

__all__ = ["Param", "NoiseProtocol"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: (truth (b, D, H, W) bool, keys (b,) int64, params dict) -> noisy (b, D, H, W) bool
ApplyFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


@dataclass(frozen=True)
class Param:
    """One parameter of a protocol.

    kind: ``"int"`` | ``"float"`` (closed range [lo, hi], or (lo, hi] with ``lo_open``) |
    ``"choice"`` (one of ``choices``, lower-case strings); default: its value when not given
    (checked against the range); doc: meaning and unit, quoted in error messages.
    """

    kind: str
    default: Any
    lo: float | None = None
    hi: float | None = None
    doc: str = ""
    choices: tuple[str, ...] = ()
    lo_open: bool = False

    def __post_init__(self):
        if self.kind not in ("int", "float", "choice"):
            raise ValueError(f"Param kind must be 'int', 'float' or 'choice', got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError("a 'choice' Param needs choices")
        if self.kind != "choice" and (self.lo is None or self.hi is None or self.lo > self.hi):
            raise ValueError(f"an {self.kind!r} Param needs lo <= hi, got {self.lo!r}, {self.hi!r}")
        object.__setattr__(self, "choices", tuple(self.choices))

    def valid(self) -> str:
        """The accepted values, as error messages quote them."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lb = "(" if self.lo_open else "["
        return f"{self.kind} in {lb}{self.lo}, {self.hi}]"

    def convert(self, proto: str, name: str, value: Any):
        """``value`` (a number or its string) as this parameter's type; ValueError naming
        protocol, parameter, value and the accepted values otherwise."""
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


@dataclass(frozen=True, eq=False)
class NoiseProtocol:
    """One annotation-noise protocol; register it with ``svl_env.noise.register_noise``.

    Attributes:
        name: lower-case identifier used in specs (``"mt"``, ``"mt:side_max=9"``, ``"mt+flip"``).
        apply: (truth (b, D, H, W) bool, keys (b,) int64, params) -> noisy (b, D, H, W) bool,
            called on the rows that draw this protocol. ``keys`` are the rows' noise keys
            (``rng.substream(episode_keys, TAG_NOISE)``); draw from ``rng`` under ``tag`` so
            that row b's result depends only on ``keys[b]`` and ``truth[b]``. ``None`` only
            for ``"none"``, the identity (its rows are not counted as corrupted).
        params: parameter name -> ``Param``, in the order of the canonical spec. Names are
            matched case-insensitively.
        presets: preset name -> overrides of the defaults (``"name:preset=literature"``);
            ``"default"`` (the defaults) is always there and comes first.
        tag: the ``rng`` tag under the noise keys that ``apply`` draws from; unique among
            the registered protocols (tag 1 is the row selection's). None: draws nothing.
        dice_range: documented range of the mean Dice(noisy, truth) at the defaults,
            noise_ratio 1, on 64 phantoms at 32^3 (asserted by tests/env/test_noise.py).
        dice_measured: (mean, 5th pct, 95th pct, mean at 64^3) of that Dice when the range
            was set, for the package doc's table.
        check: optional cross-parameter check of a full params dict (raises ValueError).
        doc: one line naming the protocol and its source, for tables.
    """

    name: str
    apply: ApplyFn | None
    params: Mapping[str, Param] = field(default_factory=dict)
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tag: int | None = None
    dice_range: tuple[float, float] | None = None
    dice_measured: tuple[float, float, float, float] | None = None
    check: Callable[[dict], None] | None = None
    doc: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"noise protocol name must be a lower-case identifier ([a-z][a-z0-9_]*), "
                             f"got {self.name!r}")
        if self.apply is None and self.name != "none":
            raise ValueError(f"noise protocol {self.name!r} needs an apply function (only 'none' is the identity)")
        if self.apply is not None and not callable(self.apply):
            raise ValueError(f"noise protocol {self.name!r}: apply must be callable")
        params = dict(self.params)
        lower = [k.lower() for k in params]
        if len(set(lower)) != len(lower) or "preset" in lower:
            raise ValueError(f"noise protocol {self.name!r}: parameter names must differ ignoring case "
                             f"and not be 'preset', got {list(params)}")
        defaults = {k: p.convert(self.name, k, p.default) for k, p in params.items()}
        presets = {"default": defaults}
        for pname, over in dict(self.presets).items():
            if not isinstance(pname, str) or pname != pname.strip().lower() or pname in presets:
                raise ValueError(f"noise protocol {self.name!r}: bad preset name {pname!r}")
            unknown = set(over) - set(params)
            if unknown:
                raise ValueError(f"noise protocol {self.name!r}: preset {pname!r} sets unknown {sorted(unknown)}")
            presets[pname] = {**defaults, **{k: params[k].convert(self.name, k, v) for k, v in over.items()}}
        for values in presets.values():
            if self.check is not None:
                self.check(values)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "presets", presets)
        if self.dice_range is not None:
            lo, hi = self.dice_range
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"noise protocol {self.name!r}: dice_range must be 0 <= lo <= hi <= 1")

    @property
    def defaults(self) -> dict:
        """Parameter name -> default value (a fresh dict)."""
        return dict(self.presets["default"])

    def make_params(self, given: Mapping[str, Any]) -> dict:
        """Defaults (or the preset ``given["preset"]``) overridden by ``given``; every given
        value checked; ValueError naming the item otherwise."""
        proto = self.name
        given = dict(given)
        preset = given.pop("preset", "default")
        presets = self.presets
        if not isinstance(preset, str) or preset.strip().lower() not in presets:
            raise ValueError(f"noise {proto!r}: unknown preset {preset!r}; valid: {', '.join(presets)}")
        params = dict(presets[preset.strip().lower()])
        by_lower = {k.lower(): k for k in self.params}  # parameter names are case-insensitive ("t" = "T")
        for key, value in given.items():
            name = by_lower.get(key.lower()) if isinstance(key, str) else None
            if name is None:
                raise ValueError(f"noise {proto!r}: unknown parameter {key!r}; valid parameters: {self.valid_names()}")
            params[name] = self.params[name].convert(proto, name, value)
        if self.check is not None:
            self.check(params)
        return params

    def valid_names(self) -> str:
        """``"a, b, preset"``: the parameter names an error message lists."""
        return ", ".join(list(self.params) + ["preset"])
