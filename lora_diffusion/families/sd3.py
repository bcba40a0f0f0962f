"""Stable Diffusion 3 / 3.5 (medium, large): an MMDiT rectified-flow transformer over 16-channel latents (patched
inside the model), conditioned on CLIP-L + CLIP-G + T5 with pooled projections; classifier-free guidance. 1024 px."""

from __future__ import annotations

from ..generation.defaults import GenerationDefaults
from .family import Family

# attention of the joint blocks: the image stream's q/k/v/out and the text stream's add_* projections (the last
# block has no text output, which its pattern then simply does not match there); attn-ff adds the feed-forwards
_ATTN = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_k", "transformer_blocks.*.attn.to_v",
         "transformer_blocks.*.attn.to_out.0", "transformer_blocks.*.attn.add_q_proj",
         "transformer_blocks.*.attn.add_k_proj", "transformer_blocks.*.attn.add_v_proj",
         "transformer_blocks.*.attn.to_add_out"]
_FF = ["transformer_blocks.*.ff.net.0.proj", "transformer_blocks.*.ff.net.2", "transformer_blocks.*.ff_context.net.0.proj",
       "transformer_blocks.*.ff_context.net.2"]
_MODULATION = ["transformer_blocks.*.norm1.linear", "transformer_blocks.*.norm1_context.linear"]
PRESETS = {"attn": _ATTN, "attn-ff": _ATTN + _FF, "full": _ATTN + _FF + _MODULATION}


def _recognises(config: dict) -> bool:
    return "caption_projection_dim" in config and "joint_attention_dim" in config


def _conditioning(pipe, base: str):
    from .sd3_conditioning import Sd3Encoders

    return Sd3Encoders(pipe)


def _objective(pipe):
    from .flow_matching import Sd3Objective

    return Sd3Objective(shift=float(pipe.scheduler.config.get("shift", 3.0)))


def _mmdit_modules(modules: dict) -> dict:
    from ..adapters.sd3_layout import MMDIT  # imported late: adapters import the families

    return MMDIT.to_original(modules)


def _load_mmdit(path, config: dict, folder, dtype):
    """SD3's original-layout file through diffusers' own single-file converter, with the folder's config."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_single_file(str(path), config=str(folder), subfolder="transformer",
                                                  local_files_only=True, torch_dtype=dtype)


def _single_file_pipeline(path, dtype):
    from ..models.transformer_file import pipeline_with_transformer

    return pipeline_with_transformer(path, "SD3.x", dtype, _load_mmdit)


def _single_file_configs(path) -> dict:
    from ..models.transformer_file import folder_configs

    return folder_configs(path, "SD3.x")


def _native_resolution(configs: dict) -> int:
    blocks = len(configs.get("vae", {}).get("block_out_channels", (0, 0, 0, 0)))
    return int(configs["transformer"]["sample_size"]) * 2 ** (blocks - 1)


FAMILY = Family(
    name="sd3", label="SD3.x", kohya_version="sd3", kohya_aliases=("sd3.5", "sd3_medium", "sd3.5_large"),
    denoiser="transformer", profile="sd3", text_encoders={"te1": "text_encoder", "te2": "text_encoder_2"},
    recognises=_recognises, conditioning=_conditioning, objective=_objective, target_presets=PRESETS,
    checkpoint_recognises=lambda keys: any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys),
    native_resolution=_native_resolution, graphable=False, kohya_modules=_mmdit_modules,
    single_file_pipeline=_single_file_pipeline, single_file_configs=_single_file_configs,
    file_layouts=("diffusers", "kohya"),  # diffusers' layout by default: diffusers reads no kohya SD3 file
    generation=GenerationDefaults(steps=28, cfg=3.5, sampler="Euler"),
)
