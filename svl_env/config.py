"""``EnvConfig``: the one description of an SVL-DRL environment's options.

Every option of ``SVLDRLVectorEnv`` is a field here, with the constructor's default; the
constructor builds an ``EnvConfig`` from its keywords (or takes one, ``config=``) and checks it
with ``validate``. Agents keep it, write it into run folders (``to_json``), read it back
(``from_json``, which accepts every file written before this class existed: those held the
keyword arguments as given) and derive what they need from its properties (``patch_shape``,
``torch_device``, ``num_actions``, ...) instead of reading dicts::

    cfg = EnvConfig(patch_size=16, noise="mt+flip")
    env = SVLDRLVectorEnv(4, config=cfg)                   # == SVLDRLVectorEnv(4, **cfg.to_kwargs())
    back = EnvConfig.from_json(json.loads(json.dumps(cfg.to_json())))   # == cfg

Options of the data source (phantom ``families``/``modalities``; a folder's ``labels``,
``label_value``, ``modality``, ...) live in ``data_options``; in keyword form and in JSON they
sit next to the env's own options, as ``SVLDRLVectorEnv(**kwargs)`` takes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from .dynamics import ACTION_SETS
from .noise import parse_noise
from .reward import RewardWeights

__all__ = ["EnvConfig", "CHANNEL_NAMES", "DATA_OPTIONS", "RENDER_MODES", "parse_device", "parse_patch_size"]

CHANNEL_NAMES = ("image", "mask", "annotation", "image_mean3", "mask_mean3", "time")
RENDER_MODES = ("rgb_array",)
#: Keyword options of the data sources (``PhantomSource``; ``CaseSource.from_folder`` and the
#: ``DecathlonDataset`` it opens) that a config file may hold next to the env's own options.
DATA_OPTIONS = frozenset({"families", "modalities", "labels", "label_value", "modality", "fg_prob", "split",
                          "ct_window", "require_labels", "cache"})


def parse_device(device) -> torch.device:
    """A usable torch device, or ValueError naming the problem (not a later CUDA assertion)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (expected e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__}); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def parse_patch_size(patch_size) -> tuple[int, int, int]:
    """An int or 3 ints (>= 2 each) -> (D, H, W) voxels; ValueError otherwise."""
    shape = (patch_size,) * 3 if isinstance(patch_size, (int, np.integer)) else tuple(int(s) for s in patch_size)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"patch_size must be an int or 3 ints >= 2, got {patch_size!r}")
    return shape


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """The options of ``SVLDRLVectorEnv`` (see its docstring for each), except ``num_envs``.

    Values are kept as given (``noise=None`` stays "the data's default"); ``validate`` checks
    everything that can be checked without opening the data, with the env's own messages.
    A 3-element ``patch_size`` list (as JSON returns it) is stored as a tuple.
    """

    data: Any = "phantom"
    patch_size: int | tuple[int, int, int] = 32
    noise: Any = None
    noise_ratio: float = 1.0
    action_set: str = "label"
    segmenter: torch.nn.Module | None = None
    reward_target: str = "clean"
    initial_mask: str | None = None
    max_steps: int | None = None
    reward_weights: Any = None
    action_rewards: bool = False
    device: Any = "cpu"
    return_tensors: bool = False
    render_mode: str | None = None
    autoreset_mode: Any = AutoresetMode.NEXT_STEP
    max_episode_steps: int | None = None
    data_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.patch_size, list):
            object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "data_options", dict(self.data_options))

    # ----------------------------------------------------------------- building
    @classmethod
    def from_kwargs(cls, **kwargs) -> EnvConfig:
        """From ``SVLDRLVectorEnv`` keyword arguments: names that are not env options are data options."""
        return cls().replace(**kwargs)

    @classmethod
    def from_any(cls, value) -> EnvConfig:
        """An ``EnvConfig`` as is, a keyword dict (``from_kwargs``) or None (the defaults)."""
        if isinstance(value, EnvConfig):
            return value
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            return cls.from_kwargs(**value)
        raise TypeError(f"an env config must be an EnvConfig or a dict of env options, got {type(value).__name__}")

    def replace(self, **changes) -> EnvConfig:
        """A copy with ``changes``: env options by name; any other name adds or changes a data
        option (``data_options=`` replaces them all)."""
        fields = {k: changes.pop(k) for k in list(changes) if k in _FIELDS}
        fields["data_options"] = {**fields.get("data_options", self.data_options), **changes}
        return dataclasses.replace(self, **fields)

    # ------------------------------------------------------------ serialising
    def to_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this config (the options that differ from their
        defaults, data options flattened): ``SVLDRLVectorEnv(n, **cfg.to_kwargs())``."""
        out = {k: v for k, v in self._options().items() if _differs(v, _DEFAULTS[k])}
        return {**out, **self.data_options}

    def to_json(self, *, strict: bool = True) -> dict[str, Any]:
        """Every option as a JSON value (paths and devices as str, tuples as lists, the
        autoreset mode by its value, reward weights as a dict), data options flattened.

        A value with no JSON form (a segmenter module, a source or ``NoiseModel`` object)
        raises ValueError naming the option with ``strict``, else is written as ``str(value)``
        (a record of what was used, which ``from_json`` cannot rebuild).
        """
        out = {}
        for k, v in {**self._options(), **self.data_options}.items():
            v = _plain(v)
            if not _is_json(v):
                if strict:
                    raise ValueError(f"env option {k}={type(v).__name__} cannot be stored in a checkpoint config; "
                                     "pass plain values (data folder path, noise spec string, ...)")
                v = str(v)
            out[k] = v
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> EnvConfig:
        """From ``to_json``'s dict or an older run's env dict (the keyword arguments as given,
        which may name the autoreset mode as ``str(AutoresetMode.X)``). Unknown keys: ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"an env config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(_FIELDS) - DATA_OPTIONS - {"data_options"}
        if unknown:
            raise ValueError(f"unknown env config key(s) {sorted(unknown)}; env options: "
                             f"{sorted(set(_FIELDS) - {'data_options'})}, data options: {sorted(DATA_OPTIONS)}")
        kw = dict(d)
        mode = kw.get("autoreset_mode")
        if isinstance(mode, str):
            name = mode.removeprefix("AutoresetMode.")
            kw["autoreset_mode"] = AutoresetMode[name] if name in AutoresetMode.__members__ else AutoresetMode(mode)
        return cls.from_kwargs(**kw)

    def _options(self) -> dict[str, Any]:
        """The env's own options (every field but ``data_options``)."""
        return {k: getattr(self, k) for k in _DEFAULTS}

    # -------------------------------------------------- derived (each checks its inputs)
    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """(D, H, W) voxels of a patch."""
        return parse_patch_size(self.patch_size)

    @property
    def torch_device(self) -> torch.device:
        return parse_device(self.device)

    @property
    def episode_steps(self) -> int:
        """Steps before truncation: ``max_steps`` when given, else the alias ``max_episode_steps``
        (``make_vec`` fills it from the registered spec, so an explicit ``max_steps`` must win),
        else 5 (PixelRL's t_max)."""
        steps = self.max_steps if self.max_steps is not None else self.max_episode_steps
        steps = 5 if steps is None else steps
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {steps!r}")
        return int(steps)

    @property
    def action_names(self) -> tuple[str, ...]:
        if self.action_set not in ACTION_SETS:
            raise ValueError(f"unknown action_set {self.action_set!r}; valid: {list(ACTION_SETS)}")
        return ACTION_SETS[self.action_set]

    @property
    def num_actions(self) -> int:
        """K, the actions per voxel."""
        return len(self.action_names)

    @property
    def num_channels(self) -> int:
        """C, the observation channels (``CHANNEL_NAMES``)."""
        return len(CHANNEL_NAMES)

    @property
    def resolved_initial_mask(self) -> str:
        """``initial_mask``, its default filled in: the segmenter's mask for intensity actions."""
        mask = self.initial_mask
        if mask is None:
            mask = "segmenter" if self.action_set == "intensity" else "annotation"
        if mask not in ("annotation", "segmenter"):
            raise ValueError(f"initial_mask must be 'annotation' or 'segmenter', got {mask!r}")
        if mask == "segmenter" and self.segmenter is None:
            raise ValueError("initial_mask='segmenter' needs a segmenter")
        return mask

    @property
    def weights(self) -> RewardWeights:
        return RewardWeights.from_any(self.reward_weights)

    @property
    def autoreset(self) -> AutoresetMode:
        m = self.autoreset_mode
        return m if isinstance(m, AutoresetMode) else AutoresetMode(m)

    # --------------------------------------------------------------- checking
    def validate(self) -> EnvConfig:
        """Check every option that needs no data (the env checks the rest: patch size against
        the source, the truth a clean reward target needs, noise on already-noisy labels).
        Raises ValueError naming the option; returns ``self``."""
        self.torch_device
        self.patch_shape
        self.episode_steps
        self.action_names
        if self.action_set == "intensity" and self.segmenter is None:
            raise ValueError("action_set='intensity' needs a segmenter (a torch module: image -> logits)")
        if self.segmenter is not None and not callable(self.segmenter):
            raise ValueError(f"segmenter must be a callable torch module, got {type(self.segmenter).__name__}")
        self.resolved_initial_mask
        if self.action_rewards and self.action_set != "label":
            raise ValueError("action_rewards=True needs action_set='label' "
                             "(the reward decomposes per voxel only there)")
        if self.reward_target not in ("clean", "annotation"):
            raise ValueError(f"reward_target must be 'clean' or 'annotation', got {self.reward_target!r}")
        self.weights
        if self.noise is not None:
            parse_noise(self.noise)
        if not 0.0 <= float(self.noise_ratio) <= 1.0:
            raise ValueError(f"noise_ratio must be in [0, 1], got {self.noise_ratio!r}")
        if self.render_mode is not None and self.render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {list(RENDER_MODES)} or None, got {self.render_mode!r}")
        self.autoreset
        clash = set(self.data_options) & set(_FIELDS)
        if clash:
            raise ValueError(f"data_options {sorted(clash)} are env options: pass them as such")
        return self


_FIELDS = tuple(f.name for f in dataclasses.fields(EnvConfig))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EnvConfig) if f.name != "data_options"}


def _differs(value, default) -> bool:
    # by type too: noise_ratio=1 or max_steps=5.0 must survive a to_kwargs round trip as given
    if value is default:
        return False
    try:
        return type(value) is not type(default) or bool(value != default)
    except (TypeError, ValueError, RuntimeError):  # arrays, tensors: no single truth value
        return True


def _plain(v):
    """``v`` with the JSON-able spelling of values that have one (recursively)."""
    if isinstance(v, (Path, torch.device)):
        return str(v)
    if isinstance(v, AutoresetMode):
        return v.value
    if isinstance(v, RewardWeights):
        return dataclasses.asdict(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _is_json(v) -> bool:
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    if isinstance(v, list):
        return all(_is_json(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json(x) for k, x in v.items())
    return False
