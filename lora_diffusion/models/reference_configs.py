"""Architecture configs of the Stable Diffusion families, for building same-shaped models offline.

Used to check LoRA injection and file sizes at real shapes (on the meta device, no
weights) and to build random-weight SD-architecture models for benchmarks.
"""

from __future__ import annotations

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD2_UNET = dict(
    SD15_UNET,
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
CLIP_L = dict(  # SD1.x text encoder; SDXL's first
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
OPENCLIP_H = dict(CLIP_L, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23, hidden_act="gelu", projection_dim=1024)
OPENCLIP_BIGG = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)

ARCHITECTURES = {
    "sd1": {"unet": SD15_UNET, "te": CLIP_L},
    "sd2": {"unet": SD2_UNET, "te": OPENCLIP_H},
    "sdxl": {"unet": SDXL_UNET, "te1": CLIP_L, "te2": OPENCLIP_BIGG},
}


def build_components(arch: str, device: str = "meta") -> dict:
    """Random-weight (or, on "meta", weightless) UNet and text encoders of a real SD family."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = ARCHITECTURES[arch]
    with torch.device(device):
        components = {"unet": UNet2DConditionModel(**spec["unet"])}
        for role in ("te", "te1", "te2"):
            if role in spec:
                cls = CLIPTextModelWithProjection if role == "te2" else CLIPTextModel
                components[role] = cls(CLIPTextConfig(**spec[role]))
    return components
