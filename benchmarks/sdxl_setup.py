"""Shared by the SDXL GPU benchmarks: an SDXL-architecture pipeline with random weights (2.57 B-parameter
UNet, CLIP-L + OpenCLIP-bigG text encoders, the SD VAE shape with SDXL's scaling and force_upcast),
saved as a diffusers folder, and a procedural 1024 px captioned folder. Nothing is downloaded: both
tokenizers are the CLIP BPE vocabulary that ships with the built-in model."""

from __future__ import annotations

from pathlib import Path

import torch


def build_pipeline(folder: Path) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from lora_diffusion.models.builtin import builtin_path
    from lora_diffusion.models.reference_configs import CLIP_L, OPENCLIP_BIGG, SDXL_UNET

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 3.5 B weights: seconds on a GPU
    with torch.device(device):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        unet = UNet2DConditionModel(**SDXL_UNET)
        te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG))
    tokenizer = CLIPTokenizer.from_pretrained(str(builtin_path() / "tokenizer"))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)


def write_data(folder: Path, count: int, size: int = 1024) -> None:
    import random

    from lora_diffusion.world.scenes import caption, render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(count):
        scene = sample_scene(rng)
        render(scene, size, supersample=1).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(caption(scene))


def prepared(work: Path, name: str, build, images: int) -> tuple[Path, Path]:
    """(pipeline folder ``work/name``, made by ``build(folder)``; the procedural data folder) under ``work``, each
    made once (every benchmark's setup shares this)."""
    base, data = work / name, work / "data"
    if not (base / "model_index.json").exists():
        build(base)
        torch.cuda.empty_cache()
    if not data.exists():
        write_data(data, images)
    return base, data


def prepare(work: Path, images: int) -> tuple[Path, Path]:
    """(pipeline folder, data folder) under ``work``, built once."""
    return prepared(work, "sdxl-random", build_pipeline, images)
