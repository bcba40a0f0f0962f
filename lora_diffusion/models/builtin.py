"""The built-in base model: a small genuine Stable Diffusion pipeline shipped in the package.

Trained from scratch by ``train_scripts/train_base.py`` on the procedural shapes
world (``lora_diffusion.world``); loads with ``StableDiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

from ..families.builtin import MARKER as BUILTIN_MARKER  # noqa: F401 - train_base.py writes it

RESOLUTION = 64

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),  # 3 blocks: 2 downsamples, 64 px -> 16×16 latents
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=RESOLUTION,
)
UNET_CONFIG = dict(
    sample_size=RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(64, 128, 192),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=128,
    attention_head_dim=(4, 8, 8),
    norm_num_groups=32,
)
TEXT_CONFIG = dict(
    vocab_size=49408,  # the real CLIP BPE vocabulary, so prompts tokenize as with SD
    hidden_size=128,
    intermediate_size=512,
    num_attention_heads=4,
    num_hidden_layers=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=128,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)


def builtin_path() -> Path:
    """Folder of the shipped pipeline (``model_index.json`` and component folders)."""
    return Path(__file__).resolve().parent.parent / "builtin" / "model"


def build_untrained(seed: int = 0):
    """The components with fresh random weights (the starting point of training)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return vae, unet, text_encoder
