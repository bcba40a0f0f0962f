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

# FLUX.1 (black-forest-labs' release): the 12 B transformer of dev (schnell: guidance_embeds False), its 16-channel
# VAE and the T5-XXL v1.1 encoder it reads (also SD3's third encoder)
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
)
T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
)
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)

SD35_LARGE_TRANSFORMER = dict(  # Stability AI's SD3.5 Large MMDiT (8.1 B); its VAE is FLUX's shape, SD3's shift/scale
    sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
    joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192, qk_norm="rms_norm",
)
SD3_VAE = dict(FLUX_VAE, scaling_factor=1.5305, shift_factor=0.0609)

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
