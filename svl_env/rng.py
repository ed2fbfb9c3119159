"""Counter-based random numbers, batched over environments.

Every environment of a batch owns an integer *key* (drawn from its own seeded
``np_random`` at reset). All randomness of an episode -- the phantom, the annotation
noise, the intensity actions' epsilon -- is a pure function of ``(key, tag, index)``.

Why hand-written: torch has no batched generator with one independent stream per row,
and "env i of a vector env == a single env with seed s+i" needs exactly that. Keys for
sub-purposes are derived with a stateless integer hash (batched, cheap on (B,) tensors);
large fields are then drawn with one ``torch.Generator`` per row seeded from the derived
key -- one C call per row, 20x faster on CPU than hashing every voxel (measured: 16 x 64^3
uniforms, 12 ms vs 200 ms). Numbers differ between CPU and CUDA generators but are
reproducible on each.

The hash is Wellons' ``lowbias32`` evaluated in int64 arithmetic with every product kept
below 2**63, so no signed overflow happens on any backend.
"""

from __future__ import annotations

import numpy as np
import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
KEY_BITS = 31  # keys live in [0, 2**31): they fit every integer dtype we use


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for x in [0, 2**32) without leaving int64's range."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer mix (lowbias32); int64 tensor in [0, 2**32) -> same."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def draw_key(np_random: np.random.Generator) -> int:
    """One episode key from an environment's seeded numpy generator."""
    return int(np_random.integers(0, 2**KEY_BITS))


def as_keys(keys, device: torch.device | str | None = None) -> torch.Tensor:
    """Keys as an int64 tensor of shape (B,)."""
    return torch.as_tensor(keys, dtype=torch.int64, device=device).reshape(-1)


def substream(keys: torch.Tensor, *tags) -> torch.Tensor:
    """Derive independent keys (B,) for a named purpose. ``tags`` are small ints, or (B,) int64
    tensors that give each row its own tag (the same bits as that row with the scalar tag: one
    batched derivation where rows of different purposes would need one call each)."""
    k = hash32(keys)
    for tag in tags:
        t = (tag * _GOLDEN) & _M32 if torch.is_tensor(tag) else torch.full_like(k, (int(tag) * _GOLDEN) & _M32)
        k = hash32(k ^ hash32(t))
    return k


def normal_seeds(keys: torch.Tensor) -> torch.Tensor:
    """The per-row generator seeds that ``normal(keys, ...)`` uses."""
    return hash32(substream(keys, 1))


def _rows_seeded(seeds: torch.Tensor, shape: tuple[int, ...], dtype, fill) -> torch.Tensor:
    """(B, *shape) samples, row b filled by ``fill`` (``Tensor.uniform_`` / ``normal_``) from a
    generator seeded with ``seeds[b]``.

    One C call per row (see module doc), on the row views of one ``unbind``: ``uniform_`` /
    ``normal_`` are the kernels ``torch.rand`` / ``torch.randn`` with ``out=`` run (the same
    numbers), ~2 us less per row than indexing ``out[b]`` and parsing randn's keyword
    arguments, which matters as every reset draws ~15 fields per row."""
    out = torch.empty((seeds.shape[0], *shape), dtype=dtype, device=seeds.device)
    gen = torch.Generator(device=seeds.device)
    for row, s in zip(out.unbind(0), seeds.tolist()):
        gen.manual_seed(s)
        fill(row, generator=gen)
    return out


def uniform_seeded(seeds: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) samples (B, *shape), row b from a generator seeded with ``seeds[b]``."""
    return _rows_seeded(seeds, shape, dtype, torch.Tensor.uniform_)


def normal_seeded(seeds: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Standard normal samples (B, *shape), row b from a generator seeded with ``seeds[b]``."""
    return _rows_seeded(seeds, shape, dtype, torch.Tensor.normal_)


def uniform(keys: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) samples of shape (B, *shape): row b depends only on keys[b] (and shape)."""
    return uniform_seeded(hash32(keys), shape, dtype)


def normal(keys: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Standard normal samples (B, *shape): row b depends only on keys[b]."""
    return normal_seeded(normal_seeds(keys), shape, dtype)


def params(keys: torch.Tensor, tag: int, n: int) -> torch.Tensor:
    """(B, n) U[0,1) scalars for per-episode parameters, independent per ``tag``."""
    return uniform(substream(keys, tag), (n,))
