"""SDXL base: CLIP-L + OpenCLIP-bigG (2048 wide together), pooled text and size conditioning, 1024 px."""

from __future__ import annotations

from ..errors import UserError
from .family import Family
from .shared import cross_attention_dim, sd_checkpoint


def _recognises(config: dict) -> bool:
    return config.get("addition_embed_type") == "text_time" or cross_attention_dim(config) == 2048


def _conditioning(pipe, base: str):
    from .conditioning import SdxlEncoders

    te, te2 = getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)
    if te2 is not None and (te is None or pipe.config.get("requires_aesthetics_score", False)):
        raise UserError(
            f"base {base} is an SDXL refiner (one 1280-wide text encoder, aesthetic-score conditioning): "
            "train LoRAs on the SDXL base model and use the refiner as it is"
        )
    return SdxlEncoders(pipe)


FAMILY = Family(
    name="sdxl", label="SDXL", kohya_version="sdxl_base_v1-0", kohya_aliases=("sdxl_base_v0-9",), profile="sdxl",
    text_encoders={"te1": "text_encoder", "te2": "text_encoder_2"}, recognises=_recognises,
    conditioning=_conditioning,
    checkpoint_recognises=lambda keys: sd_checkpoint(keys) and any(k.startswith("conditioner.embedders.1.") for k in keys),
)
