"""The built-in base: a 35 MB SD1-architecture pipeline shipped in the package, marked in its UNet config."""

from __future__ import annotations

from .family import Family
from .sd1 import _conditioning

MARKER = "_lora_diffusion_base"  # in the UNet's config.json: lets loaders and adapter files tell it apart

FAMILY = Family(
    name="builtin", label="the built-in base", kohya_version="lora_diffusion_builtin", profile="builtin",
    recognises=lambda config: config.get(MARKER) is True, conditioning=_conditioning,
    upscale_warning=True,  # 64 px and small: larger images cost quadratically more and teach it nothing it can draw
)
