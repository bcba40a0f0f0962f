"""FLUX.1 (dev, schnell): a 12 B rectified-flow transformer over 2×2-packed 16-channel latents, conditioned on T5
(sequence) and CLIP-L (pooled); dev is guidance-distilled (a guidance embedding), schnell is not. 1024 px."""

from __future__ import annotations

from ..generation.defaults import GenerationDefaults
from .family import Family

# LoRA presets over the transformer's module paths (diffusers names). attn: every attention projection of the
# double blocks (image and text streams) and the single blocks — diffusers' default; attn-ff adds the
# feed-forwards and the single blocks' fused MLP/output; full adds the AdaLN modulation (kohya/ai-toolkit's
# "every Linear of the blocks").
_ATTN = ["*transformer_blocks.*.attn.to_q", "*transformer_blocks.*.attn.to_k", "*transformer_blocks.*.attn.to_v",
         "*transformer_blocks.*.attn.to_out.0", "*transformer_blocks.*.attn.add_q_proj",
         "*transformer_blocks.*.attn.add_k_proj", "*transformer_blocks.*.attn.add_v_proj",
         "*transformer_blocks.*.attn.to_add_out"]
_FF = ["transformer_blocks.*.ff.net.0.proj", "transformer_blocks.*.ff.net.2", "transformer_blocks.*.ff_context.net.0.proj",
       "transformer_blocks.*.ff_context.net.2", "single_transformer_blocks.*.proj_mlp",
       "single_transformer_blocks.*.proj_out"]
_MODULATION = ["transformer_blocks.*.norm1.linear", "transformer_blocks.*.norm1_context.linear",
               "single_transformer_blocks.*.norm.linear"]
PRESETS = {"attn": _ATTN, "attn-ff": _ATTN + _FF, "full": _ATTN + _FF + _MODULATION}
T5_TOKENS = {True: 512, False: 256}  # dev (guidance-distilled) reads 512 T5 tokens, schnell 256


def _recognises(config: dict) -> bool:
    return "num_single_layers" in config and "joint_attention_dim" in config


def _conditioning(pipe, base: str):
    from .flux_conditioning import FluxEncoders

    return FluxEncoders(pipe, T5_TOKENS[bool(pipe.transformer.config.guidance_embeds)])


def _objective(pipe):
    from .flow_matching import FluxObjective

    return FluxObjective(guidance_embeds=bool(pipe.transformer.config.guidance_embeds))


def _bfl_modules(modules: dict) -> dict:
    from ..adapters.flux_layout import to_bfl  # imported late: adapters import the families

    return to_bfl(modules)


SCHNELL = GenerationDefaults(steps=4, cfg=0.0, sampler="Euler")  # timestep-distilled, no guidance input


def _generation_variant(configs: dict) -> GenerationDefaults | None:
    guided = configs.get("transformer", {}).get("guidance_embeds", True)
    return None if guided else SCHNELL


def _single_file_pipeline(path, dtype):
    from ..models.flux_checkpoint import load_flux_transformer
    from ..models.transformer_file import pipeline_with_transformer

    return pipeline_with_transformer(path, "FLUX.1", dtype, load_flux_transformer)


def _single_file_configs(path) -> dict:
    from ..models.transformer_file import folder_configs

    return folder_configs(path, "FLUX.1")


def _native_resolution(configs: dict) -> int:
    return int(configs.get("vae", {}).get("sample_size", 1024))  # FLUX's VAE config records 1024


FAMILY = Family(
    name="flux", label="FLUX.1", kohya_version="flux1", denoiser="transformer", profile="flux",
    text_encoders={"te1": "text_encoder"},  # CLIP-L; T5 stays frozen (kohya trains CLIP-L only, on request)
    recognises=_recognises, conditioning=_conditioning, objective=_objective, target_presets=PRESETS,
    checkpoint_recognises=lambda keys: any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks."))
                                           for k in keys),
    native_resolution=_native_resolution, graphable=False, kohya_modules=_bfl_modules,
    generation=GenerationDefaults(steps=28, cfg=3.5, sampler="Euler"), generation_variant=_generation_variant,
    single_file_pipeline=_single_file_pipeline, single_file_configs=_single_file_configs,
)
