"""Captions → what a FLUX.1 transformer is conditioned on, as diffusers' ``FluxPipeline`` builds it at generation
time: T5's last hidden states (the token sequence the double blocks attend to) and CLIP-L's pooled output (the
vector beside the timestep in every block's modulation). Image geometry plays no part.

Only CLIP-L is a LoRA role (``te1``, kohya's ``lora_te1_``); T5 stays frozen and is listed under ``t5`` so the
trainer places, freezes and offloads it like any text encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.dataset import Geometry

CLIP_LENGTH = 77


def _ids(tokenizer, captions: list[str], length: int, encoder: nn.Module) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").input_ids.to(next(encoder.parameters()).device)


class FluxEncoders:
    """CLIP-L (pooled) and T5 (sequence), with ``max_length`` T5 tokens per caption (512 dev, 256 schnell)."""

    def __init__(self, pipe, max_length: int) -> None:
        self.encoders: dict[str, nn.Module] = {"te1": pipe.text_encoder, "t5": pipe.text_encoder_2}
        self.tokenizers = {"te1": pipe.tokenizer, "t5": pipe.tokenizer_2}
        self.max_length = max_length

    def encode(self, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        clip, t5 = self.encoders["te1"], self.encoders["t5"]
        pooled = clip(_ids(self.tokenizers["te1"], captions, CLIP_LENGTH, clip), output_hidden_states=False).pooler_output
        states = t5(_ids(self.tokenizers["t5"], captions, self.max_length, t5), output_hidden_states=False)[0]
        return {"states": states.to(device), "pooled": pooled.to(device)}

    def unet_inputs(self, encoded: dict[str, torch.Tensor], geometries: list[Geometry]) -> tuple[torch.Tensor, dict | None]:
        return encoded["states"], {"pooled_projections": encoded["pooled"]}
