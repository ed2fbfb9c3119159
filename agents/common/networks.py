"""3D fully-convolutional networks shared by the voxel agents (vA3C) and the SB3 baselines.

Public API (kept stable, other modules build on it)::

    make_backbone(kind="unet", in_channels=6, width=16, depth=2, **kw) -> nn.Module
        forward: (B, C, D, H, W) -> (B, F, D, H, W), attribute ``out_channels`` = F
    PolicyValueNet(in_channels, n_actions, backbone="unet", width=16, depth=2, convgru=False)
        forward(obs, hidden=None) -> (logits (B, K, D, H, W), value (B, D, H, W), hidden)

Every voxel is one agent; all agents share the weights, so the network is fully convolutional
and accepts any spatial size (the U-Net pads to a multiple of 2**depth and crops back).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["make_backbone", "PolicyValueNet", "UNet3D", "DilatedFCN3D", "ConvGRU3D", "BACKBONES",
           "keep_biased_policy_head", "PooledValueHead", "Conv3d"]


def _groups(ch: int) -> int:
    # GroupNorm instead of BatchNorm: batches are small (a few 16-32^3 patches) and the
    # async workers must not depend on batch statistics.
    for g in (8, 4, 2):
        if ch % g == 0:
            return g
    return 1


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs in float32 under CPU bf16 autocast when the input is smaller than
    the kernel along some axis (e.g. the 2^3 bottom of a depth-3 U-Net on 16^3 patches).

    Why: oneDNN's bf16 3x3x3 convolution (torch 2.13, CPU) returns garbage gradients -- about one
    call in three non-finite, the rest off by up to 1e36 -- when a spatial axis is 2 voxels long
    (sizes 1, 3, 4 and 8 are exact to bf16 rounding; checked in ``tests/algos/test_precision.py``).
    Such a level holds a handful of voxels, so float32 there costs nothing measurable. Outside bf16
    autocast this is ``nn.Conv3d`` itself (same results).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and _cpu_autocast_on()
                and any(s < k for s, k in zip(x.shape[-3:], self.kernel_size))):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class ConvBlock(nn.Sequential):
    """conv3x3x3 -> GroupNorm -> ReLU, ``n`` times; keeps the spatial size."""

    def __init__(self, cin: int, cout: int, n: int = 2, dilation: int = 1):
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [Conv3d(cin if i == 0 else cout, cout, 3, padding=dilation, dilation=dilation),
                       nn.GroupNorm(_groups(cout), cout), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """Small multi-scale 3D U-Net: sees far (receptive field ~ 2**depth times a plain conv
    stack's) at low cost.

    Cost is dominated by full-resolution layers (measured on 2 CPU cores: one 16->16
    3x3x3 conv at 8x32^3 is ~0.3 s forward+backward), so the full-resolution stem and last
    decoder block use ``full_res_convs`` (default 1) convolutions, downsampling is a strided
    2x2x2 conv, and the ``convs`` (default 2) convolutions per block run at the lower levels.
    ``width`` channels at full resolution, doubled at each of ``depth`` downsamplings.

    Input (B, C, D, H, W) of any size -> features (B, width, D, H, W); sizes that are not a
    multiple of 2**depth are replicate-padded at the far end and cropped back.
    """

    def __init__(self, in_channels: int = 6, width: int = 16, depth: int = 2, convs: int = 2,
                 full_res_convs: int = 1):
        super().__init__()
        self.depth = int(depth)
        self.out_channels = int(width)
        chans = [width * 2 ** i for i in range(self.depth + 1)]
        n_conv = [full_res_convs] + [convs] * self.depth
        self.inc = ConvBlock(in_channels, chans[0], n_conv[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(chans[i], chans[i + 1], 2, stride=2),
                          nn.GroupNorm(_groups(chans[i + 1]), chans[i + 1]), nn.ReLU(inplace=True),
                          ConvBlock(chans[i + 1], chans[i + 1], n_conv[i + 1]))
            for i in range(self.depth))
        self.up = nn.ModuleList(nn.ConvTranspose3d(chans[i + 1], chans[i], 2, stride=2)
                                for i in range(self.depth))
        self.dec = nn.ModuleList(ConvBlock(2 * chans[i], chans[i], n_conv[i]) for i in range(self.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D, H, W = x.shape[-3:]
        m = 2 ** self.depth
        pad = [(-s) % m for s in (W, H, D)]
        if any(pad):
            # replicate-pad on the far side so the pooling grid is whole; cropped back below
            x = F.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]), mode="replicate")
        skips = [self.inc(x)]
        for blk in self.down:
            skips.append(blk(skips[-1]))
        y = skips[-1]
        for i in reversed(range(self.depth)):
            y = self.dec[i](torch.cat([self.up[i](y), skips[i]], dim=1))
        return y[..., :D, :H, :W]


class DilatedFCN3D(nn.Module):
    """PixelRL-style full-resolution FCN with growing dilations (1, 2, 3, 4, ...).

    ``depth`` = number of dilated conv layers after the first plain one.
    Input (B, C, D, H, W) -> (B, width, D, H, W).
    """

    def __init__(self, in_channels: int = 6, width: int = 16, depth: int = 3, dilations=None):
        super().__init__()
        dil = list(dilations) if dilations is not None else list(range(2, 2 + int(depth)))
        self.out_channels = int(width)
        layers = [ConvBlock(in_channels, width, 1)]
        layers += [ConvBlock(width, width, 1, dilation=d) for d in dil]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


BACKBONES = {"unet": UNet3D, "dilated": DilatedFCN3D}


def make_backbone(kind: str = "unet", in_channels: int = 6, width: int = 16, depth: int = 2,
                  **kw) -> nn.Module:
    """A 3D fully-convolutional feature extractor (B, C, D, H, W) -> (B, out_channels, D, H, W).

    kind: "unet" (multi-scale, default) or "dilated" (full-resolution dilated convs).
    """
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone {kind!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[kind](in_channels=in_channels, width=width, depth=depth, **kw)


class ConvGRU3D(nn.Module):
    """Convolutional GRU cell (3x3x3), PixelRL's recurrent policy branch, per voxel state.

    x: (B, C, D, H, W), h: (B, C, D, H, W) or None -> new h (B, C, D, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gates = Conv3d(2 * channels, 2 * channels, 3, padding=1)
        self.cand = Conv3d(2 * channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if h is None or h.shape != x.shape:
            h = torch.zeros_like(x)
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, dim=1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * n


class PolicyValueNet(nn.Module):
    """Shared backbone + per-voxel policy head (K logits) and per-voxel value head.

    forward(obs (B, C, D, H, W), hidden=None) ->
        logits (B, K, D, H, W), value (B, D, H, W), hidden ((B, F, D, H, W) with convgru, else None)
    """

    def __init__(self, in_channels: int, n_actions: int, backbone: str = "unet", width: int = 16,
                 depth: int = 2, convgru: bool = False, **backbone_kw):
        super().__init__()
        self.config = dict(in_channels=int(in_channels), n_actions=int(n_actions), backbone=backbone,
                           width=int(width), depth=int(depth), convgru=bool(convgru), **backbone_kw)
        self.trunk = make_backbone(backbone, in_channels=in_channels, width=width, depth=depth,
                                   **backbone_kw)
        f = self.trunk.out_channels
        self.gru = ConvGRU3D(f) if convgru else None
        # 1x1x1 heads: the trunk already mixes space; a 3x3x3 head at full resolution would
        # cost as much as a trunk layer.
        self.policy_head = nn.Sequential(nn.Conv3d(f, f, 1), nn.ReLU(inplace=True), nn.Conv3d(f, n_actions, 1))
        self.value_head = nn.Sequential(nn.Conv3d(f, f, 1), nn.ReLU(inplace=True), nn.Conv3d(f, 1, 1))
        # start near-uniform policy / zero value: small last layers
        for head in (self.policy_head, self.value_head):
            nn.init.normal_(head[-1].weight, std=1e-2)
            nn.init.zeros_(head[-1].bias)

    @property
    def n_actions(self) -> int:
        return self.config["n_actions"]

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Trunk features (B, F, D, H, W)."""
        return self.trunk(obs)

    def forward(self, obs: torch.Tensor, hidden: torch.Tensor | None = None):
        feat = self.trunk(obs)
        pfeat = feat
        if self.gru is not None:
            hidden = self.gru(feat, hidden)
            pfeat = hidden
        else:
            hidden = None
        logits = self.policy_head(pfeat)
        value = self.value_head(feat)[:, 0]
        return logits, value, hidden


def keep_biased_policy_head(features: int, n_actions: int, keep_bias: float) -> nn.Sequential:
    """Per-voxel policy head of the PPO baselines (SB3 and RLlib): (B, F, D, H, W) -> logits (B, K, D, H, W).

    3x3x3 conv, ReLU, 1x1x1 conv; the last layer starts small with action 0 ("keep") biased by
    ``keep_bias``: uniform logits would flip one voxel in four at random per step and wreck the
    annotation before anything is learnt (p(keep) ~ 0.95 at 4.0).
    """
    head = nn.Sequential(Conv3d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv3d(features, n_actions, 1))
    nn.init.normal_(head[-1].weight, std=1e-2)
    with torch.no_grad():
        head[-1].bias.zero_()
        head[-1].bias[0] = keep_bias
    return head


class PooledValueHead(nn.Module):
    """(B, F, D, H, W) -> (B, 1): conv, ReLU, global average pool, linear.

    The environment's reward is one scalar per volume (Dice gain minus continuity cost), so
    the critic is one value per volume: pooled, not per voxel.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv = Conv3d(features, features, 3, padding=1)
        self.fc = nn.Linear(features, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3, 4)))
