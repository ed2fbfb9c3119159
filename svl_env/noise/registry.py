"""The registered noise protocols, and every table derived from them.

The built-in protocols (one module each: ``none``, ``mt``, ``sp``, ``markov``, ``flip``) are
registered at import; ``register_noise`` adds one more, seen at once by ``parse_noise``,
``gym.make(..., noise=...)``, mixtures and the error messages.
"""

from __future__ import annotations

from typing import Any

from . import flip, markov, mt, none, sp
from .protocol import NoiseProtocol

__all__ = ["register_noise", "unregister_noise", "get_noise", "protocol_names", "unknown_protocol",
           "default_params", "literature_params", "presets", "dice_at_defaults", "protocol_table"]

TAG_SELECT = 1  # rng tag (under the noise keys) of the row selection and the mixture draw

_REGISTRY: dict[str, NoiseProtocol] = {}
_BUILTIN = tuple(m.PROTOCOL for m in (none, mt, sp, markov, flip))


def register_noise(protocol: NoiseProtocol) -> NoiseProtocol:
    """Add ``protocol`` to the registry (after the others) and return it.

    ValueError if its name or its ``tag`` is already taken (``unregister_noise`` first).
    """
    if not isinstance(protocol, NoiseProtocol):
        raise TypeError(f"register_noise needs a NoiseProtocol, got {type(protocol).__name__}")
    if protocol.name in _REGISTRY:
        raise ValueError(f"noise protocol {protocol.name!r} is already registered")
    if protocol.tag is not None:
        taken = {p.tag: p.name for p in _REGISTRY.values() if p.tag is not None}
        if protocol.tag == TAG_SELECT or protocol.tag in taken:
            owner = taken.get(protocol.tag, "the row selection")
            raise ValueError(f"noise protocol {protocol.name!r}: rng tag {protocol.tag} is used by {owner}; "
                             f"taken: {sorted([TAG_SELECT, *taken])}")
    _REGISTRY[protocol.name] = protocol
    return protocol


def unregister_noise(name: str) -> NoiseProtocol:
    """Remove a protocol added with ``register_noise`` and return it (the built-ins stay)."""
    if name in {p.name for p in _BUILTIN}:
        raise ValueError(f"noise protocol {name!r} is built in and cannot be unregistered")
    if name not in _REGISTRY:
        raise unknown_protocol(name)
    return _REGISTRY.pop(name)


def get_noise(name: str) -> NoiseProtocol:
    """The registered protocol ``name``; ValueError listing the valid ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_protocol(name) from None


def protocol_names() -> tuple[str, ...]:
    """Names of the registered protocols, in registration order."""
    return tuple(_REGISTRY)


def unknown_protocol(name: Any) -> ValueError:
    return ValueError(f"unknown noise protocol {name!r}; valid: {', '.join(_REGISTRY)} "
                      f"(or a mixture such as 'mt+markov' / {{'mt': 0.7, 'markov': 0.3}})")


def default_params() -> dict[str, dict]:
    """Protocol -> its default parameters."""
    return {n: p.defaults for n, p in _REGISTRY.items()}


def literature_params() -> dict[str, dict]:
    """Protocol -> its published parameters (preset ``literature``), for protocols that have them."""
    return {n: dict(p.presets["literature"]) for n, p in _REGISTRY.items() if "literature" in p.presets}


def presets() -> dict[str, dict[str, dict]]:
    """Protocol -> preset name -> parameters (``"default"`` first)."""
    return {n: {k: dict(v) for k, v in p.presets.items()} for n, p in _REGISTRY.items()}


def dice_at_defaults() -> dict[str, tuple[float, float]]:
    """Protocol -> documented range of the mean Dice at the defaults (protocols that document one)."""
    return {n: p.dice_range for n, p in _REGISTRY.items() if p.dice_range is not None}


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def protocol_table() -> str:
    """The registered protocols as an RST table: name, parameters (defaults), presets, the
    measured Dice at the defaults (mean, 5th-95th percentile, mean at 64^3) and its
    documented range (see the package doc for how it is measured)."""
    head = ("protocol", "parameters (defaults)", "presets", "mean", "p5 - p95", "mean range", "64^3")
    rows = []
    for p in _REGISTRY.values():
        params = ", ".join(f"{k}={_fmt_value(v)}" for k, v in p.defaults.items()) or "--"
        extra = ", ".join(k for k in p.presets if k != "default") or "--"
        m = p.dice_measured
        r = p.dice_range
        rows.append((p.name, params, extra, f"{m[0]:.3f}" if m else "--", f"{m[1]:.2f} - {m[2]:.2f}" if m else "--",
                     f"{r[0]:.2f} - {r[1]:.2f}" if r else "--", f"{m[3]:.3f}" if m else "--"))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([*lines, rule])


for _p in _BUILTIN:
    register_noise(_p)
del _p
