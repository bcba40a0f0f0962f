"""Shared by the SD3 GPU benchmarks: an SD3.5-Large-architecture pipeline with random weights (8.1 B-parameter
MMDiT, CLIP-L and CLIP-G with projections, T5-XXL, the 16-channel VAE with SD3's shift and scale), saved as a bf16
diffusers folder. Nothing is downloaded: the CLIP tokenizers are the built-in model's BPE vocabulary and the T5
one is built offline."""

from __future__ import annotations

from pathlib import Path

import torch


def build_pipeline(folder: Path) -> None:
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    from lora_diffusion.models.builtin import builtin_path
    from lora_diffusion.models.reference_configs import CLIP_L, OPENCLIP_BIGG, SD3_VAE, SD35_LARGE_TRANSFORMER, T5_XXL
    from lora_diffusion.models.tiny import tiny_t5_tokenizer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER)
            vae = AutoencoderKL(**SD3_VAE)
            clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))
            clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG))
            t5 = T5EncoderModel(T5Config(**T5_XXL))
    finally:
        torch.set_default_dtype(previous)
    tokenizer = CLIPTokenizer.from_pretrained(str(builtin_path() / "tokenizer"))
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=clip_l, tokenizer=tokenizer, text_encoder_2=clip_g,
                                    tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=tiny_t5_tokenizer(256))
    pipe.save_pretrained(str(folder), safe_serialization=True, max_shard_size="10GB")


def prepare(work: Path, images: int) -> tuple[Path, Path]:
    """(pipeline folder, data folder) under ``work``, built once."""
    from sdxl_setup import prepared

    return prepared(work, "sd35-large-random", build_pipeline, images)
