"""Shared by the FLUX GPU benchmarks: a FLUX.1-dev-architecture pipeline with random weights (11.9 B-parameter
transformer with the guidance embedding, CLIP-L, T5-XXL, the 16-channel VAE), saved as a bf16 diffusers folder,
and a procedural 1024 px captioned folder. Nothing is downloaded: the CLIP tokenizer is the built-in model's BPE
vocabulary and the T5 one is built offline (``models/tiny.tiny_t5_tokenizer``)."""

from __future__ import annotations

from pathlib import Path

import torch


def build_pipeline(folder: Path, guidance: bool = True) -> None:
    """Random FLUX.1-dev (``guidance``) or -schnell weights, initialised on the GPU in bf16 (seconds) and saved."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from lora_diffusion.models.builtin import builtin_path
    from lora_diffusion.models.reference_configs import (CLIP_L, FLUX_DEV_TRANSFORMER, FLUX_SCHEDULER, FLUX_VAE,
                                                         T5_XXL)
    from lora_diffusion.models.tiny import tiny_t5_tokenizer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 12 B weights in fp32 would be 48 GB before the cast
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**dict(FLUX_DEV_TRANSFORMER, guidance_embeds=guidance))
            vae = AutoencoderKL(**FLUX_VAE)
            clip = CLIPTextModel(CLIPTextConfig(**CLIP_L))
            t5 = T5EncoderModel(T5Config(**T5_XXL))
    finally:
        torch.set_default_dtype(previous)
    tokenizer = CLIPTokenizer.from_pretrained(str(builtin_path() / "tokenizer"))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tiny_t5_tokenizer(512),
                        transformer=transformer)
    pipe.save_pretrained(str(folder), safe_serialization=True, max_shard_size="10GB")


def prepare(work: Path, images: int, guidance: bool = True) -> tuple[Path, Path]:
    """(pipeline folder, data folder) under ``work``, built once."""
    from sdxl_setup import prepared

    name = "flux-dev-random" if guidance else "flux-schnell-random"
    return prepared(work, name, lambda folder: build_pipeline(folder, guidance), images)
