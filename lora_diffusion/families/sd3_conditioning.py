"""Captions → what an SD3/SD3.5 transformer is conditioned on, as diffusers' ``StableDiffusion3Pipeline`` builds it:
CLIP-L's and CLIP-G's penultimate hidden states side by side, zero-padded to T5's width and followed by T5's
states along the sequence; the two CLIPs' pooled projections side by side. A base without T5 gets zeros in its
place, as the pipeline gives. CLIP-L and CLIP-G are the LoRA roles ``te1``/``te2``; T5 stays frozen (``t5``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data.dataset import Geometry
from .flux_conditioning import CLIP_LENGTH, _ids

T5_TOKENS = 256  # the SD3 pipelines' default max_sequence_length


class Sd3Encoders:
    """CLIP-L and CLIP-G (penultimate states and pooled projections) and T5 (or its zeros)."""

    def __init__(self, pipe) -> None:
        self.encoders: dict[str, nn.Module] = {"te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
        if getattr(pipe, "text_encoder_3", None) is not None:
            self.encoders["t5"] = pipe.text_encoder_3
        self.tokenizers = {"te1": pipe.tokenizer, "te2": pipe.tokenizer_2, "t5": getattr(pipe, "tokenizer_3", None)}
        self.width = int(pipe.transformer.config.joint_attention_dim)

    def encode(self, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        states, pooled = [], []
        for role in ("te1", "te2"):
            encoder = self.encoders[role]
            out = encoder(_ids(self.tokenizers[role], captions, CLIP_LENGTH, encoder), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(states, dim=-1)
        clip = F.pad(clip, (0, self.width - clip.shape[-1]))
        if "t5" in self.encoders:
            t5 = self.encoders["t5"]
            t5_states = t5(_ids(self.tokenizers["t5"], captions, T5_TOKENS, t5))[0]
        else:
            t5_states = torch.zeros(len(captions), CLIP_LENGTH, self.width, device=clip.device, dtype=clip.dtype)
        return {"states": torch.cat([clip, t5_states.to(clip.dtype)], dim=-2).to(device),
                "pooled": torch.cat(pooled, dim=-1).to(device)}

    def unet_inputs(self, encoded: dict[str, torch.Tensor], geometries: list[Geometry]) -> tuple[torch.Tensor, dict | None]:
        return encoded["states"], {"pooled_projections": encoded["pooled"]}
