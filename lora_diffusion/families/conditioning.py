"""Captions and image geometry → what a UNet is conditioned on: the two shapes SD-style families share.

SD1.x / SD2.x (and the built-in base): the last hidden states of the one text encoder.
SDXL: the penultimate hidden states of both text encoders side by side, the second encoder's
pooled projection, and ``add_time_ids`` — each image's original size, crop offset and target
size — exactly as diffusers' ``StableDiffusionXLPipeline`` builds them at generation time.

The trainer only sees the small interface: ``encoders`` (kohya role → text encoder),
``encode(captions)`` (tensors per caption, cacheable) and ``unet_inputs(encoded, geometries)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.dataset import Geometry


def _token_ids(tokenizer, captions: list[str], encoder: nn.Module) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(next(encoder.parameters()).device)  # (DDP wrappers have no .device)


class SingleEncoder:
    """SD1.x/SD2.x: one CLIP text encoder; its last hidden states condition the UNet."""

    def __init__(self, pipe) -> None:
        self.encoders: dict[str, nn.Module] = {"te": pipe.text_encoder}
        self.tokenizer = pipe.tokenizer

    def encode(self, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        encoder = self.encoders["te"]
        return {"states": encoder(_token_ids(self.tokenizer, captions, encoder))[0].to(device)}

    def unet_inputs(self, encoded: dict[str, torch.Tensor], geometries: list[Geometry]) -> tuple[torch.Tensor, dict | None]:
        return encoded["states"], None


class SdxlEncoders:
    """SDXL base: CLIP-L and OpenCLIP-bigG, penultimate layers concatenated, bigG's pooled output."""

    def __init__(self, pipe) -> None:
        self.encoders: dict[str, nn.Module] = {"te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
        self.tokenizers = {"te1": pipe.tokenizer, "te2": pipe.tokenizer_2}

    def encode(self, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        states = []
        for role, encoder in self.encoders.items():
            out = encoder(_token_ids(self.tokenizers[role], captions, encoder), output_hidden_states=True)
            states.append(out.hidden_states[-2].to(device))
        # out is the second encoder's (CLIPTextModelWithProjection): its first output is the pooled projection
        return {"states": torch.cat(states, dim=-1), "pooled": out[0].to(device)}

    def unet_inputs(self, encoded: dict[str, torch.Tensor], geometries: list[Geometry]) -> tuple[torch.Tensor, dict | None]:
        states = encoded["states"]
        time_ids = torch.tensor([g.time_ids() for g in geometries], dtype=states.dtype, device=states.device)
        return states, {"text_embeds": encoded["pooled"], "time_ids": time_ids}
