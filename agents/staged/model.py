"""The staged SVL-DRL network: one shared 3D encoder, three decoders (segmentation, value, policy).

Shapes (B batch, D/H/W voxels, S = ``N_STATE`` agent-state channels)::

    image (B, 1, D, H, W) float32 in [0, 1]
        -- encoder -->        features: a list of multi-scale maps (shared by all decoders)
        -- seg decoder -->    logits (B, 1, D, H, W)                 (foreground where > 0)
    features + state (B, S, D, H, W)
        -- policy decoder --> label logits (B, 4, D, H, W)           (svl_env LABEL_ACTIONS)
                              intensity logits (B, 3, D, H, W)       (svl_env INTENSITY_ACTIONS)
        -- value decoder -->  values (B, 2, D, H, W)                 (label agents, intensity agents)

``forward(image)`` is the segmentation path alone, so the model is a ``segmenter`` for
``SVLDRLVectorEnv(action_set="intensity", segmenter=model)`` and for sliding-window inference.

The agent state (``state_channels``) is what a voxel agent knows besides the image: its current
mask state f_t, the label the episode started from, the 3x3x3 mean of f_t, the segmentation
decoder's (detached) foreground probability -- the model's consensus over all training cases --
and t / T. The policy and value decoders receive it at every scale (average-pooled), so a
voxel agent sees where its label boundary lies relative to the image's and the consensus's.

Backbones:

- ``"unet"`` (default): a small 3D U-Net that trains on CPU. Encoder: full-resolution stem
  (``full_res_convs`` 3x3x3 convs), then ``depth`` levels of strided 2x2x2 down-convolution +
  ``convs`` 3x3x3 convs, channels ``width * 2**level``. Each decoder mirrors it (transposed
  conv up, concatenation with the encoder skip [+ the pooled state], convs); the policy and
  value decoders use ``rl_width`` channels per ``width`` (cheaper than the segmentation one).
  Any spatial size: inputs are replicate-padded to a multiple of 2**depth and cropped back.
- ``"swin_unetr"``: MONAI's Swin UNETR (the paper's backbone) as the shared part, built with
  ``out_channels = feature_size`` so that it returns full-resolution features; the three
  decoders are then 3x3x3 conv blocks + 1x1 heads on those features (the multi-scale decoder
  lives inside MONAI's network). Needs the ``monai`` extra (``pip install "svl-drl[monai]"``);
  inputs are padded to a multiple of 32 (Swin UNETR's requirement), and to at least 64 per axis
  (so that its bottleneck holds more than one voxel; its instance norm needs that in training).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.common.networks import ConvBlock, _groups
from agents.common.precision import autocast

__all__ = ["StagedNet", "make_model", "BACKBONES", "DEFAULT_MODEL", "N_STATE", "STATE_CHANNELS", "state_channels",
           "N_LABEL_ACTIONS", "N_INTENSITY_ACTIONS", "MonaiMissingError"]

STATE_CHANNELS = ("mask", "start_label", "mask_mean3", "seg_prob", "consensus_gap", "time")
N_STATE = len(STATE_CHANNELS)
N_LABEL_ACTIONS = 4  # svl_env.dynamics.LABEL_ACTIONS
N_INTENSITY_ACTIONS = 3  # svl_env.dynamics.INTENSITY_ACTIONS
BACKBONES = ("unet", "swin_unetr")

DEFAULT_MODEL = {"backbone": "unet", "width": 8, "depth": 3, "convs": 2, "full_res_convs": 1, "rl_width": 0.5,
                 "feature_size": 24, "keep_bias": 2.0, "rl_full_res_convs": 0}


class MonaiMissingError(ImportError, ValueError):
    """The Swin UNETR backbone was requested but MONAI is not installed."""


def state_channels(mask: torch.Tensor, start_label: torch.Tensor, seg_prob: torch.Tensor, t: int | torch.Tensor,
                   max_steps: int) -> torch.Tensor:
    """The agent state, (B, D, H, W) maps -> (B, N_STATE, D, H, W) float32 (order: ``STATE_CHANNELS``)."""
    from svl_env.dynamics import neighbourhood_mean

    if torch.is_tensor(t) and t.dim() > 0:
        time = (t.float() / max_steps).view(-1, 1, 1, 1).expand_as(mask)
    else:
        time = torch.full_like(mask, float(t) / max_steps)
    mask = mask.float()
    mean3 = neighbourhood_mean(mask)
    return torch.stack([mask, start_label.float(), mean3, seg_prob.float(),
                        consensus_gap(mask, mean3, seg_prob.float()).expand_as(mask), time], 1)


def consensus_gap(mask: torch.Tensor, mask_mean3: torch.Tensor, seg_prob: torch.Tensor) -> torch.Tensor:
    """Signed disagreement of a label with the model's consensus along the label's boundary.

    mean of (seg_prob - mask) over the boundary band (voxels whose 3x3x3 neighbourhood holds both
    labels), one number per patch in [-1, 1], returned as (B, 1, 1, 1): < 0 where the label
    reaches beyond what the model (trained on every case) predicts -- a dilated annotation --, > 0
    where it stops short -- an eroded one. Annotation noise such as MT-Noise is systematic per
    case, so this patch-level number is what tells a voxel agent on the boundary which way its
    case's annotation is off; per voxel, the model's probability alone is too uncertain."""
    band = ((mask_mean3 > 0) & (mask_mean3 < 1)).float()
    n = band.sum((1, 2, 3)).clamp_min(1.0)
    return (((seg_prob - mask) * band).sum((1, 2, 3)) / n).view(-1, 1, 1, 1)


class _Encoder(nn.Module):
    def __init__(self, chans, convs, full_res_convs, in_channels=1):
        super().__init__()
        self.inc = ConvBlock(in_channels, chans[0], full_res_convs)
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(chans[i], chans[i + 1], 2, stride=2),
                          nn.GroupNorm(_groups(chans[i + 1]), chans[i + 1]), nn.ReLU(inplace=True),
                          ConvBlock(chans[i + 1], chans[i + 1], convs))
            for i in range(len(chans) - 1))

    def forward(self, x):
        skips = [self.inc(x)]
        for blk in self.down:
            skips.append(blk(skips[-1]))
        return skips


class _Decoder(nn.Module):
    """U-Net decoder over encoder skips ``enc`` (channel list, full resolution first).

    ``extra``: state channels concatenated (average-pooled) at every level; ``chans`` its own
    channels per level (may be narrower than the encoder's)."""

    def __init__(self, enc, chans, extra, convs, full_res_convs):
        super().__init__()
        depth = len(enc) - 1
        self.extra = int(extra)
        self.bottom = nn.Conv3d(enc[-1] + self.extra, chans[-1], 1) if depth else None
        self.up = nn.ModuleList(nn.ConvTranspose3d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth))
        n_conv = [full_res_convs] + [convs] * depth
        first_in = enc[0] + self.extra + (chans[0] if depth else 0)
        blocks = []
        for i in range(max(depth, 1)):
            cin = (chans[i] + enc[i] + self.extra) if i else first_in
            if n_conv[i] > 0:
                blocks.append(ConvBlock(cin, chans[i], n_conv[i]))
            else:  # a 1x1x1 mixing layer: full resolution is where the cost is (module doc)
                blocks.append(nn.Sequential(nn.Conv3d(cin, chans[i], 1), nn.GroupNorm(_groups(chans[i]), chans[i]),
                                            nn.ReLU(inplace=True)))
        self.dec = nn.ModuleList(blocks)
        self.out_channels = chans[0]

    def forward(self, skips, state=None):
        depth = len(skips) - 1
        pooled = []
        if self.extra:
            pooled = [state] + [F.avg_pool3d(state, 2 ** i) for i in range(1, depth + 1)]

        def cat(i, *xs):
            return torch.cat(list(xs) + ([pooled[i]] if self.extra else []), 1)

        if depth == 0:
            return self.dec[0](cat(0, skips[0]))
        y = self.bottom(cat(depth, skips[depth]))
        for i in reversed(range(depth)):
            y = self.dec[i](cat(i, self.up[i](y), skips[i]))
        return y


class _SwinTrunk(nn.Module):
    """MONAI Swin UNETR returning ``feature_size`` full-resolution feature maps (a one-item skip list)."""

    def __init__(self, feature_size: int):
        super().__init__()
        try:
            from monai.networks.nets import SwinUNETR
        except ImportError as exc:  # pragma: no cover - exercised only without monai
            raise MonaiMissingError(
                "backbone 'swin_unetr' needs MONAI: pip install 'svl-drl[monai]' (or pip install monai)") from exc
        import inspect

        kw = dict(in_channels=1, out_channels=int(feature_size), feature_size=int(feature_size), spatial_dims=3)
        if "img_size" in inspect.signature(SwinUNETR.__init__).parameters:  # MONAI < 1.5 needs it
            kw["img_size"] = (64, 64, 64)
        self.net = SwinUNETR(**kw)
        self.out_channels = int(feature_size)

    def forward(self, x):
        return [self.net(x)]


class StagedNet(nn.Module):
    """Shared encoder + segmentation / value / policy decoders (module doc for shapes)."""

    def __init__(self, backbone: str = "unet", width: int = 12, depth: int = 3, convs: int = 2,
                 full_res_convs: int = 1, rl_width: float = 0.5, feature_size: int = 24, keep_bias: float = 2.0,
                 rl_full_res_convs: int = 0, agents: bool = True):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
        for k, v in (("width", width), ("convs", convs), ("full_res_convs", full_res_convs),
                     ("feature_size", feature_size)):
            if int(v) < 1:
                raise ValueError(f"{k} must be >= 1, got {v!r}")
        if int(depth) < 0:
            raise ValueError(f"depth must be >= 0, got {depth!r}")
        if not 0 < float(rl_width) <= 4:
            raise ValueError(f"rl_width must be in (0, 4], got {rl_width!r}")
        self.config = dict(backbone=backbone, width=int(width), depth=int(depth), convs=int(convs),
                           full_res_convs=int(full_res_convs), rl_width=float(rl_width),
                           feature_size=int(feature_size), keep_bias=float(keep_bias),
                           rl_full_res_convs=int(rl_full_res_convs), agents=bool(agents))
        if backbone == "unet":
            enc = [int(width) * 2 ** i for i in range(int(depth) + 1)]
            self.multiple = 2 ** int(depth)
            self.min_size = 0
            self.encoder = _Encoder(enc, int(convs), int(full_res_convs))
        else:
            self.encoder = _SwinTrunk(feature_size)
            enc = [self.encoder.out_channels]
            self.multiple = 32
            # and at least 64 voxels per axis: at 32 the bottleneck is one voxel, whose instance
            # norm raises in training mode (MONAI 1.6: "Expected more than 1 spatial element")
            self.min_size = 64
        self.enc_channels = enc
        self.seg_decoder = _Decoder(enc, enc, 0, int(convs), int(full_res_convs))
        self.seg_head = nn.Conv3d(enc[0], 1, 1)
        self.has_agents = bool(agents)
        # "fp32" or "bf16" (agents.common.precision): how encode / seg_logits / agent_outputs run.
        # Set by the trainer; neither config nor weights (those stay float32), so no checkpoint keeps it.
        self.precision = "fp32"
        if self.has_agents:
            rl = [max(4, int(round(c * float(rl_width)))) for c in enc]
            self.policy_decoder = _Decoder(enc, rl, N_STATE, int(convs), int(rl_full_res_convs))
            self.value_decoder = _Decoder(enc, rl, N_STATE, int(convs), int(rl_full_res_convs))
            self.label_head = nn.Conv3d(rl[0], N_LABEL_ACTIONS, 1)
            self.intensity_head = nn.Conv3d(rl[0], N_INTENSITY_ACTIONS, 1)
            self.value_head = nn.Conv3d(rl[0], 2, 1)
            # Start near the identity policy ("keep"), near-zero values: an untrained agent must
            # not damage the labels it is handed (from scratch a uniform editor first has to
            # undo its own edits, vA3C's known failure).
            for head in (self.label_head, self.intensity_head, self.value_head):
                nn.init.normal_(head.weight, std=1e-2)
                nn.init.zeros_(head.bias)
            with torch.no_grad():
                self.label_head.bias[0] = float(keep_bias)
                self.intensity_head.bias[0] = float(keep_bias)

    # -- padding to the backbone's size multiple
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.multiple
        pad = [max((-s) % m, self.min_size - s) for s in reversed(x.shape[-3:])]
        if any(pad):
            x = F.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]), mode="replicate")
        return x

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image (B, 1, D, H, W) -> multi-scale features of the (padded) volume."""
        if image.dim() != 5 or image.shape[1] != 1:
            raise ValueError(f"image must be (B, 1, D, H, W), got {tuple(image.shape)}")
        with autocast(self.precision, image.device):
            return self.encoder(self._pad(image))

    def seg_logits(self, feats: list[torch.Tensor], shape) -> torch.Tensor:
        """Segmentation decoder: features -> logits (B, 1, D, H, W) float32, cropped to ``shape`` (D, H, W)."""
        with autocast(self.precision, feats[0].device):
            y = self.seg_head(self.seg_decoder(feats))
        return y[..., :shape[0], :shape[1], :shape[2]].float()

    def agent_outputs(self, feats: list[torch.Tensor], state: torch.Tensor):
        """Policy and value decoders.

        state (B, N_STATE, D, H, W) -> (label logits (B, 4, D, H, W), intensity logits
        (B, 3, D, H, W), values (B, 2, D, H, W): [label agents, intensity agents]), float32."""
        if not self.has_agents:
            raise ValueError("this model was built without the agent decoders (agents=False)")
        shape = state.shape[-3:]
        s = self._pad(state)
        with autocast(self.precision, state.device):
            p = self.policy_decoder(feats, s)
            v = self.value_decoder(feats, s)
            heads = self.label_head(p), self.intensity_head(p), self.value_head(v)
        crop = (Ellipsis, slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
        return tuple(h[crop].float() for h in heads)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, 1, D, H, W) of an image batch (B, 1, D, H, W)."""
        return self.seg_logits(self.encode(image), image.shape[-3:])

    def segmentation_parameters(self):
        """Encoder + segmentation decoder parameters (what ``segment`` needs)."""
        for m in (self.encoder, self.seg_decoder, self.seg_head):
            yield from m.parameters()


def make_model(config: dict | None = None, seed: int | None = None) -> StagedNet:
    """A ``StagedNet`` from ``DEFAULT_MODEL`` overridden by ``config`` (unknown keys raise)."""
    cfg = {**DEFAULT_MODEL, **(config or {})}
    unknown = set(cfg) - set(DEFAULT_MODEL) - {"agents"}
    if unknown:
        raise ValueError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(DEFAULT_MODEL)}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return StagedNet(**cfg)
    return StagedNet(**cfg)
