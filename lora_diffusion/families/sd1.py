"""Stable Diffusion 1.x: one CLIP-L text encoder (768 wide), epsilon prediction, 512 px."""

from __future__ import annotations

from ..errors import UserError
from .family import Family
from .shared import cross_attention_dim, sd_checkpoint


def _conditioning(pipe, base: str):
    from .conditioning import SingleEncoder

    if getattr(pipe, "text_encoder", None) is None:
        raise UserError(f"base {base}: the pipeline has no text encoder; training needs one (SD1.x/SD2.x) or two (SDXL)")
    return SingleEncoder(pipe)


FAMILY = Family(
    name="sd1", label="SD1.x", kohya_version="sd_v1", profile="sd1",
    checkpoint_recognises=sd_checkpoint,
    recognises=lambda config: cross_attention_dim(config) == 768, conditioning=_conditioning,
)
