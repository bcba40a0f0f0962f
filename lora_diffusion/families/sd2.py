"""Stable Diffusion 2.x: one OpenCLIP-H text encoder (1024 wide); 512 px epsilon or 768 px v-prediction."""

from __future__ import annotations

from .family import Family
from .sd1 import _conditioning
from .shared import cross_attention_dim, sd_checkpoint

FAMILY = Family(
    name="sd2", label="SD2.x", kohya_version="sd_v2", kohya_aliases=("sd_v2_768_v",), profile="sd2", v2=True,
    checkpoint_recognises=lambda keys: sd_checkpoint(keys) and any(k.startswith("cond_stage_model.model.") for k in keys),
    recognises=lambda config: cross_attention_dim(config) == 1024, conditioning=_conditioning,
)
