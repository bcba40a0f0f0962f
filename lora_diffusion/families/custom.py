"""Anything else with a UNet: trained like SD1.x (its profile), named "custom" in files."""

from __future__ import annotations

from .family import Family
from .sd1 import _conditioning

FAMILY = Family(
    name="custom", label="a custom architecture", kohya_version="unknown", profile="sd1",
    recognises=lambda config: True, conditioning=_conditioning,
)
