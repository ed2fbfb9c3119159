"""``"none"`` -- the identity: rows that draw it keep their truth and are not counted as corrupted."""

from __future__ import annotations

from .protocol import NoiseProtocol

PROTOCOL = NoiseProtocol(
    name="none",
    apply=None,
    presets={"literature": {}},
    dice_range=(1.0, 1.0),
    dice_measured=(1.0, 1.0, 1.0, 1.0),
    doc="identity",
)
