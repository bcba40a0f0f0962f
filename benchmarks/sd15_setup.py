"""Shared by the GPU benchmarks: an SD1.5-architecture pipeline with random weights, a procedural
512 px captioned folder, and random LoRA files for it. Nothing is downloaded: the tokenizer is the
CLIP BPE vocabulary that ships with the built-in model."""

from __future__ import annotations

from pathlib import Path

import torch


def build_pipeline(folder: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lora_diffusion.models.builtin import builtin_path
    from lora_diffusion.models.reference_configs import CLIP_L, SD15_UNET

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)), unet=UNet2DConditionModel(**SD15_UNET),
        tokenizer=CLIPTokenizer.from_pretrained(str(builtin_path() / "tokenizer")),
        scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)


def write_data(folder: Path, count: int) -> None:
    import random

    from lora_diffusion.world.scenes import caption, render, sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(count):
        scene = sample_scene(rng)
        render(scene, 512, supersample=1).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(caption(scene))


def make_loras(base: Path, folder: Path, count: int) -> list[Path]:
    """``count`` rank-4 LoRAs on UNet attention and text-encoder attention, random B (as if trained)."""
    from lora_diffusion import LoraConfig, inject_adapter, lora_layers, pipeline_components, save_adapter
    from lora_diffusion.models.loading import load_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    comps = pipeline_components(load_pipeline(str(base), dtype=torch.float32))
    paths = []
    for i in range(count):
        name = f"l{i}"
        inject_adapter(comps["unet"], name, LoraConfig(rank=4))
        inject_adapter(comps["te"], name, LoraConfig(rank=4), kind="text")
        for model in comps.values():
            for layer in lora_layers(model).values():
                torch.nn.init.normal_(layer.lora_B[name].weight, std=0.01)
        paths.append(save_adapter(folder / f"{name}.safetensors", comps, name))
    return paths


def prepare(work: Path, images: int) -> tuple[Path, Path]:
    """(pipeline folder, data folder) under ``work``, built once."""
    base, data = work / "sd15-random", work / "data"
    if not (base / "model_index.json").exists():
        build_pipeline(base)
    if not data.exists():
        write_data(data, images)
    return base, data
