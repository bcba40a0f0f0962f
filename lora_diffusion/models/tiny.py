"""Tiny models of the real architectures built from configs with random weights.

Same module layout as the real families (SD1.x conv projections, SD2.x linear
projections and 1024-wide cross-attention, SDXL text_time conditioning and two
text encoders, FLUX.1's double and single transformer blocks with CLIP-L and T5) at a size that runs in
milliseconds on a CPU. Tests and demos use them; nothing is downloaded (the T5 tokenizer is built offline).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

_TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)
# cross-attention width decides which family the model is detected as
TINY_UNETS = {
    "sd1": dict(_TINY_UNET, cross_attention_dim=768),
    "sd2": dict(_TINY_UNET, cross_attention_dim=1024, use_linear_projection=True),
    "sdxl": dict(
        _TINY_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 1280,
    ),
}
_TINY_TEXT = dict(intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77)
TINY_TEXT = {
    "sd1": {"te": dict(_TINY_TEXT, hidden_size=768, hidden_act="quick_gelu")},
    "sd2": {"te": dict(_TINY_TEXT, hidden_size=1024, hidden_act="gelu")},
    "sdxl": {"te1": dict(_TINY_TEXT, hidden_size=768), "te2": dict(_TINY_TEXT, hidden_size=1280, projection_dim=1280)},
}


def tiny_components(arch: str = "sd1", seed: int = 0, vocab_size: int = 1000) -> dict:
    """UNet and text encoder(s) of the given family, tiny, seeded random weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    components = {"unet": UNet2DConditionModel(**TINY_UNETS[arch])}
    for role, cfg in TINY_TEXT[arch].items():
        config = CLIPTextConfig(vocab_size=vocab_size, eos_token_id=2, bos_token_id=1, pad_token_id=1, **cfg)
        cls = CLIPTextModelWithProjection if role == "te2" else CLIPTextModel
        components[role] = cls(config).eval()
    components["unet"].eval()
    return components


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """A CLIP BPE tokenizer over single characters (real BPE files, tiny vocabulary)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789,.!?'-")
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
        vocab.setdefault(s + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_pipeline(arch: str = "sd1", seed: int = 0, tokenizer_dir: str | Path | None = None):
    """A complete tiny ``StableDiffusionPipeline`` (SD1/SD2 shapes) or ``StableDiffusionXLPipeline``
    (``arch="sdxl"``) with random weights."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    if arch == "flux":
        return tiny_flux_pipeline(seed, tokenizer_dir, guidance=True)
    if arch == "sd3":
        return tiny_sd3_pipeline(seed, tokenizer_dir)
    if arch not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"tiny_pipeline builds sd1, sd2, sdxl, flux or sd3 pipelines, not {arch!r}")
    components = tiny_components(arch, seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()
    tok_dir = write_tiny_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="tiny-tok-"))
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    if arch == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=components["te1"], text_encoder_2=components["te2"], tokenizer=tokenizer,
            tokenizer_2=tokenizer, unet=components["unet"], scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=components["te"],
        tokenizer=tokenizer,
        unet=components["unet"],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_t5_tokenizer(max_length: int = 512):
    """A T5 (SentencePiece-Unigram) fast tokenizer over single characters, built offline with ``tokenizers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    symbols = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789,.!?'-")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(s, -2.0) for s in symbols] + [("\u2581" + s, -2.5) for s in symbols]
    model = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def _tiny_flow_vae(seed: int, latent_channels: int, shift: float, scale: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32,
        shift_factor=shift, scaling_factor=scale, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def tiny_sd3_pipeline(seed: int = 0, tokenizer_dir: str | Path | None = None):
    """A complete tiny ``StableDiffusion3Pipeline``: two joint blocks (the last one context-pre-only, as in the real
    models), CLIP-L- and CLIP-G-shaped encoders with projections, T5, SD3's VAE shift/scale."""
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    t5_tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=16,
    ).eval()
    encoders = [CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=1000, eos_token_id=2, bos_token_id=1,
                                                           pad_token_id=1, hidden_size=width, projection_dim=16,
                                                           **_TINY_TEXT)).eval() for width in (8, 16)]
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8)).eval()
    vae = _tiny_flow_vae(seed, 4, 0.0609, 1.5305)
    tok_dir = write_tiny_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="tiny-tok-"))
    clip_tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders[0], tokenizer=clip_tokenizer, text_encoder_2=encoders[1], tokenizer_2=clip_tokenizer,
        text_encoder_3=t5, tokenizer_3=t5_tokenizer)


def tiny_flux_pipeline(seed: int = 0, tokenizer_dir: str | Path | None = None, guidance: bool = True):
    """A complete tiny ``FluxPipeline``: one double and one single block, CLIP-L- and T5-shaped encoders, a VAE
    with FLUX's shift/scale and no quant convs; ``guidance`` gives it dev's guidance embedding (schnell has none)."""
    import tempfile

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    t5_tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=(2, 2, 4),
    ).eval()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=1000, eos_token_id=2, bos_token_id=1, pad_token_id=1,
                                        hidden_size=32, **_TINY_TEXT)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8)).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32,
        shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()
    tok_dir = write_tiny_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="tiny-tok-"))
    clip_tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer,
                        text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)
